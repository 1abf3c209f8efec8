/** What makes a parsed JSON value unacceptable, and where: `path` is `.key.0.key`, empty for the root. */
export interface JsonFault {
  path: string;
  problem: string;
}

/** In a `u` regex a surrogate pair is one code point, so only a lone surrogate is in category Cs. */
const LONE_SURROGATE = /\p{Cs}/u;
/** Path segments are quoted from the request; a key of any length must not make a message huge. */
const MAX_SEGMENT_CHARS = 40;

/** An object or array still to be walked. */
interface Frame {
  value: object;
  depth: number;
  path: string;
}

function segment(key: string | number): string {
  const text = String(key);
  return `.${text.length > MAX_SEGMENT_CHARS ? `${text.slice(0, MAX_SEGMENT_CHARS)}…` : text}`;
}

/** The fault of a scalar, or undefined. */
function scalarFault(value: unknown): string | undefined {
  if (typeof value === 'number' && !Number.isFinite(value)) {
    return 'is not a finite number (a literal such as 1e999 overflows to Infinity)';
  }
  if (typeof value === 'string' && LONE_SURROGATE.test(value)) {
    return 'is not well-formed Unicode: it holds a lone surrogate (such as \\ud800)';
  }
  return undefined;
}

/**
 * Walks a value made by JSON.parse and returns its first fault: nesting deeper than `maxDepth`
 * (an object or array is one level; reported at the root), a number that is not finite, or a
 * string or key holding a lone surrogate — storage would keep U+FFFD instead of what was sent.
 * Iterative, so no input can exhaust the stack.
 */
export function findJsonFault(root: unknown, maxDepth: number): JsonFault | undefined {
  const rootFault = scalarFault(root);
  if (rootFault) return { path: '', problem: rootFault };
  if (root === null || typeof root !== 'object') return undefined;
  const stack: Frame[] = [{ value: root, depth: 1, path: '' }];
  for (let frame = stack.pop(); frame; frame = stack.pop()) {
    if (frame.depth > maxDepth) return { path: '', problem: `nests deeper than ${maxDepth} levels` };
    const entries: [string | number, unknown][] = Array.isArray(frame.value)
      ? frame.value.map((item, index) => [index, item])
      : Object.entries(frame.value);
    for (const [key, value] of entries) {
      if (typeof key === 'string' && LONE_SURROGATE.test(key)) {
        return { path: frame.path, problem: 'has a key that is not well-formed Unicode (a lone surrogate)' };
      }
      const fault = scalarFault(value);
      if (fault) return { path: frame.path + segment(key), problem: fault };
      if (value !== null && typeof value === 'object') {
        stack.push({ value, depth: frame.depth + 1, path: frame.path + segment(key) });
      }
    }
  }
  return undefined;
}
