import { describe, expect, it } from 'vitest';
import {
  applyDeltaPatch,
  applyMergePatch,
  deltaPatch,
  type JsonObject,
  jsonEqual,
  mergePatchDiff,
} from './merge-patch.js';

const state = (overrides: JsonObject = {}): JsonObject => ({
  run_id: 'run_1',
  status: 'RUNNING',
  stage: 'EXPORT',
  mode: null,
  progress: { percentage: 42.5, message: 'Receiving objects', done: 4250, total: 10000 },
  stats: { repositories: 5, refs: 120 },
  seq: 118,
  finished_at: null,
  error: null,
  ...overrides,
});

/** Diffs, checks that the patch takes `from` to `to`, and answers the patch. */
function roundTrip(from: JsonObject, to: JsonObject): JsonObject {
  const patch = mergePatchDiff(from, to);
  expect(patch).toBeDefined();
  expect(applyMergePatch(from, patch)).toStrictEqual(to);
  return patch as JsonObject;
}

describe('mergePatchDiff and applyMergePatch', () => {
  it('carries only the members that changed, nested objects member by member', () => {
    const from = state();
    const to = state({
      seq: 119,
      progress: { percentage: 43, message: 'Receiving objects', done: 4300, total: 10000 },
    });
    expect(roundTrip(from, to)).toEqual({ seq: 119, progress: { percentage: 43, done: 4300 } });
  });

  it('is empty for the same state, whatever the order of members', () => {
    const from = state();
    const reordered = Object.fromEntries(Object.entries(state()).reverse());
    expect(roundTrip(from, reordered)).toEqual({});
  });

  it('replaces arrays whole, nulls inside them kept', () => {
    const from = { tags: ['a', 'b', 'c'], nested: { list: [1, 2] } };
    const to = { tags: ['a', null, 'c'], nested: { list: [1, 2, 3] } };
    expect(roundTrip(from, to)).toEqual({ tags: ['a', null, 'c'], nested: { list: [1, 2, 3] } });
  });

  it('removes a member that is gone with null, and sets a value where there was null', () => {
    const from = { keep: 1, gone: { deep: true }, error: null };
    const to = { keep: 1, error: { code: 'X', message: 'failed' } };
    expect(roundTrip(from, to)).toEqual({ gone: null, error: { code: 'X', message: 'failed' } });
  });

  it('replaces a value by an object, and an object by a value', () => {
    expect(roundTrip({ a: 1, b: { x: 1 } }, { a: { y: 2 }, b: 'text' })).toEqual({ a: { y: 2 }, b: 'text' });
  });

  it('has no patch when a member would have to become null', () => {
    expect(mergePatchDiff(state(), state({ stage: null }))).toBeUndefined();
    expect(mergePatchDiff(state(), state({ progress: { percentage: 1, message: null } }))).toBeUndefined();
    // A new object holding a null: merged into nothing, its null would vanish.
    expect(mergePatchDiff(state({ progress: null }), state({ progress: { message: null } }))).toBeUndefined();
  });

  it('leaves the target as it was', () => {
    const from = state();
    const copy = structuredClone(from);
    applyMergePatch(from, { progress: { percentage: 50 }, stage: null });
    expect(from).toStrictEqual(copy);
  });

  it('treats undefined members as absent, as JSON does', () => {
    expect(mergePatchDiff({ a: 1, b: undefined } as JsonObject, { a: 1 })).toEqual({});
    expect(mergePatchDiff({ a: 1 }, { a: 1, b: undefined } as JsonObject)).toEqual({});
  });

  it('applies a patch that replaces the whole value when it is not an object', () => {
    expect(applyMergePatch({ a: 1 }, ['x'])).toEqual(['x']);
    expect(applyMergePatch('text', { a: 1 })).toEqual({ a: 1 });
  });

  it('creates a member named __proto__ as a member, not a prototype', () => {
    const patched = applyMergePatch({}, JSON.parse('{"__proto__": {"polluted": true}}')) as JsonObject;
    expect(Object.hasOwn(patched, '__proto__')).toBe(true);
    expect((patched as { polluted?: boolean }).polluted).toBeUndefined();
  });

  it('compares JSON values deeply', () => {
    expect(jsonEqual({ a: [1, { b: 2 }] }, { a: [1, { b: 2 }] })).toBe(true);
    expect(jsonEqual({ a: [1, { b: 2 }] }, { a: [1, { b: 3 }] })).toBe(false);
    expect(jsonEqual([1], { 0: 1 })).toBe(false);
    expect(jsonEqual({ a: null }, {})).toBe(false);
  });
});

describe('deltaPatch and applyDeltaPatch', () => {
  const at = '2026-11-29T10:00:01.000Z';
  const from = { ...state(), updated_at: '2026-11-29T10:00:00.000Z' } as JsonObject & {
    seq: number;
    updated_at: string;
  };

  it("leaves out the seq and the updated_at that the frame's seq and at already say", () => {
    const to = {
      ...from,
      seq: 120,
      updated_at: at,
      progress: { ...(from.progress as JsonObject), done: 4300 },
    };
    const patch = deltaPatch(from, to, at);
    expect(patch).toEqual({ progress: { done: 4300 } });
    expect(applyDeltaPatch(from, { seq: 120, at, patch: patch as JsonObject })).toStrictEqual(to);
  });

  it('keeps an updated_at that is not the frame’s at, changed or not', () => {
    const to = { ...from, seq: 121, stage: 'APPLY' };
    const patch = deltaPatch(from, to, at);
    expect(patch).toEqual({ stage: 'APPLY', updated_at: from.updated_at });
    expect(applyDeltaPatch(from, { seq: 121, at, patch: patch as JsonObject })).toStrictEqual(to);
  });

  it('has no patch when a member would have to become null', () => {
    expect(deltaPatch(from, { ...from, seq: 122, updated_at: at, stage: null }, at)).toBeUndefined();
  });
});
