/** A content coding the server compresses with. */
export type ContentCoding = 'gzip' | 'br';

/**
 * The first of `offered` (the server's order of preference) that an `Accept-Encoding` header
 * accepts (RFC 9110 §12.5.3): named with a weight above 0, or covered by `*` with a weight above
 * 0 and not named with weight 0. Undefined when the header is absent or accepts none of them:
 * the answer goes as it is (identity).
 */
export function negotiateCoding(
  header: string | string[] | undefined,
  offered: readonly ContentCoding[],
): ContentCoding | undefined {
  if (header === undefined) return undefined;
  const weights = new Map<string, number>();
  for (const item of (Array.isArray(header) ? header.join(',') : header).split(',')) {
    const [rawName, ...params] = item.split(';');
    const name = rawName?.trim().toLowerCase();
    if (!name) continue;
    let weight = 1;
    for (const param of params) {
      const match = /^\s*q\s*=\s*([01](?:\.\d{0,3})?)\s*$/i.exec(param);
      if (match?.[1] !== undefined) weight = Number(match[1]);
    }
    // `x-gzip` is gzip's old name, still sent by some clients.
    weights.set(name === 'x-gzip' ? 'gzip' : name, weight);
  }
  const anyWeight = weights.get('*') ?? 0;
  return offered.find((coding) => (weights.get(coding) ?? anyWeight) > 0);
}

/** Adds `Accept-Encoding` to a `Vary` header value (which may already name it, or be `*`). */
export function varyOnAcceptEncoding(current: string | number | string[] | undefined): string {
  const value = Array.isArray(current) ? current.join(', ') : current === undefined ? '' : String(current);
  if (value === '') return 'Accept-Encoding';
  if (/(^|,)\s*(\*|accept-encoding)\s*(,|$)/i.test(value)) return value;
  return `${value}, Accept-Encoding`;
}
