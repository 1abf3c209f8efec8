export * from './errors.js';
export * from './merge-patch.js';
export * from './run-status.js';
export * from './schemas.js';
