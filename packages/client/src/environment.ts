import { io } from 'socket.io-client';
import type { Environment, WakeSignal } from './types.js';

/** The real surroundings: global fetch, socket.io-client, timers, and the browser's wake signals. */
export function defaultEnvironment(): Environment {
  return {
    fetch: (input, init) => globalThis.fetch(input, init),
    createSocket: (url, options) => (url ? io(url, options) : io(options)),
    setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
    clearTimeout: (handle) => globalThis.clearTimeout(handle as ReturnType<typeof globalThis.setTimeout>),
    now: () => Date.now(),
    random: () => Math.random(),
    onWake(listener) {
      const win = (globalThis as { window?: Window }).window;
      const doc = (globalThis as { document?: Document }).document;
      if (!win) return () => {};
      const on = (signal: WakeSignal) => () => {
        if (signal === 'visibilitychange' && doc?.visibilityState !== 'visible') return;
        listener(signal);
      };
      const handlers: [EventTarget, WakeSignal, () => void][] = [
        [win, 'online', on('online')],
        [win, 'offline', on('offline')],
        [win, 'pageshow', on('pageshow')],
      ];
      if (doc) handlers.push([doc, 'visibilitychange', on('visibilitychange')]);
      for (const [target, name, fn] of handlers) target.addEventListener(name, fn);
      return () => {
        for (const [target, name, fn] of handlers) target.removeEventListener(name, fn);
      };
    },
  };
}
