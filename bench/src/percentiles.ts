/** Latency percentiles in milliseconds, from every sample recorded. */
export interface Percentiles {
  count: number;
  p50: number;
  p99: number;
  p999: number;
  max: number;
}

export const NO_SAMPLES: Percentiles = {
  count: 0,
  p50: Number.NaN,
  p99: Number.NaN,
  p999: Number.NaN,
  max: Number.NaN,
};

/** Nearest-rank percentiles of `samples` (sorted in place). */
export function percentiles(samples: number[]): Percentiles {
  if (samples.length === 0) return NO_SAMPLES;
  samples.sort((a, b) => a - b);
  const at = (q: number) =>
    samples[Math.min(samples.length - 1, Math.ceil(q * samples.length) - 1)] ?? Number.NaN;
  return {
    count: samples.length,
    p50: at(0.5),
    p99: at(0.99),
    p999: at(0.999),
    max: samples[samples.length - 1] ?? Number.NaN,
  };
}
