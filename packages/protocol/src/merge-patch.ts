/**
 * JSON merge patches (RFC 7396) between two states of a run: what a delta update carries.
 *
 * A merge patch cannot give a member the value `null` (a `null` in a patch removes the member),
 * so a change that leaves a `null` where the patch would have to write one has no patch:
 * `mergePatchDiff` answers undefined, and the change goes out whole.
 */

/** A JSON object as JSON.parse makes it. */
export type JsonObject = { [key: string]: unknown };

/** A merge patch: members to set (objects merge recursively), `null` for members to remove. */
export type MergePatch = JsonObject;

function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Deep equality of two JSON values; members of objects in any order. */
export function jsonEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!jsonEqual(a[i], b[i])) return false;
    return true;
  }
  if (Array.isArray(b)) return false;
  const aKeys = presentKeys(a as JsonObject);
  const bObject = b as JsonObject;
  if (aKeys.length !== presentKeys(bObject).length) return false;
  for (const key of aKeys) {
    if (bObject[key] === undefined || !jsonEqual((a as JsonObject)[key], bObject[key])) return false;
  }
  return true;
}

/** The members JSON.stringify writes (an `undefined` one is absent). */
function presentKeys(object: JsonObject): string[] {
  return Object.keys(object).filter((key) => object[key] !== undefined);
}

/** Whether `value` holds a `null` anywhere, which a merge patch would remove instead of set. */
function holdsNull(value: unknown): boolean {
  if (value === null) return true;
  if (!isObject(value)) return false; // an array is a plain value in a patch: its nulls stay
  for (const key of presentKeys(value)) if (holdsNull(value[key])) return true;
  return false;
}

/**
 * The merge patch that turns `from` into `to`, or undefined when none can (`to` would need a
 * `null` where `from` has something else, or a new object holding a `null`). Unchanged members
 * are left out; arrays are replaced whole. `applyMergePatch(from, patch)` equals `to`.
 */
export function mergePatchDiff(from: JsonObject, to: JsonObject): MergePatch | undefined {
  const patch: MergePatch = {};
  for (const key of presentKeys(from)) if (to[key] === undefined) patch[key] = null;
  for (const key of presentKeys(to)) {
    const before = from[key];
    const after = to[key];
    if (before !== undefined && jsonEqual(before, after)) continue;
    if (isObject(after) && isObject(before)) {
      const inner = mergePatchDiff(before, after);
      if (inner === undefined) return undefined;
      setMember(patch, key, inner);
    } else if (holdsNull(after)) {
      return undefined;
    } else {
      setMember(patch, key, after);
    }
  }
  return patch;
}

/**
 * `patch` applied to `target` (RFC 7396), as a new value: `target` is left as it was, so a state
 * already handed to the application never changes under it.
 */
export function applyMergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return patch;
  const result: JsonObject = isObject(target) ? { ...target } : {};
  for (const key of Object.keys(patch)) {
    const value = patch[key];
    if (value === null) delete result[key];
    else setMember(result, key, applyMergePatch(result[key], value));
  }
  return result;
}

/** Sets an own member, even one named `__proto__` (which plain assignment would not create). */
function setMember(object: JsonObject, key: string, value: unknown): void {
  if (key === '__proto__') {
    Object.defineProperty(object, key, { value, enumerable: true, writable: true, configurable: true });
  } else {
    object[key] = value;
  }
}

/** The members of a run snapshot a delta update relies on, whatever the rest of the snapshot. */
interface SnapshotClock {
  seq: number;
  updated_at: string;
}

/**
 * The patch a delta update with `seq` and `at` carries from the state `from` to `to`: their merge
 * patch without what the frame already says — `seq` (an update's snapshot is at the update's
 * seq) and `updated_at` when it equals the frame's `at` (a patch without `updated_at` means
 * "`at`"). Undefined when no merge patch can express the change.
 */
export function deltaPatch<S extends SnapshotClock>(from: S, to: S, at: string): MergePatch | undefined {
  const patch = mergePatchDiff(from as unknown as JsonObject, to as unknown as JsonObject);
  if (!patch) return undefined;
  delete patch.seq;
  if (to.updated_at === at) delete patch.updated_at;
  else patch.updated_at = to.updated_at;
  return patch;
}

/** The state a delta update (`seq`, `at`, `patch`) makes of `held`, as a new value. */
export function applyDeltaPatch<S extends SnapshotClock>(
  held: S,
  delta: { seq: number; at: string; patch: MergePatch },
): S {
  const state = applyMergePatch(held, delta.patch) as S;
  state.seq = delta.seq;
  if (!Object.hasOwn(delta.patch, 'updated_at')) state.updated_at = delta.at;
  return state;
}
