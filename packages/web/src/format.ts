/** Human formats for the dashboard. */
export function duration(totalS: number): string {
  if (!Number.isFinite(totalS) || totalS < 0) return '—';
  const s = Math.floor(totalS % 60);
  const m = Math.floor((totalS / 60) % 60);
  const h = Math.floor(totalS / 3600);
  if (h > 0) return `${h}h ${String(m).padStart(2, '0')}m`;
  if (m > 0) return `${m}m ${String(s).padStart(2, '0')}s`;
  return `${s}s`;
}

export function bytes(n: number | undefined): string {
  if (n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function count(n: number | null | undefined): string {
  return n === undefined || n === null ? '—' : n.toLocaleString('en');
}

export function clock(iso: string): string {
  return new Date(iso).toLocaleTimeString('en-GB', { hour12: false });
}

export function shortId(id: string): string {
  return id.length > 12 ? `${id.slice(0, 4)}…${id.slice(-6)}` : id;
}
