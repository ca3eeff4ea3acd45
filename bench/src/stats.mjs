// Small statistics helpers: latency percentiles of one slice, and the spread of values over cycles.

/**
 * Latency samples of one slice, in microseconds. The buffer is allocated once and reused, so
 * recording costs the load generator no allocation; past its capacity, samples are dropped (the
 * capacity is far above what a 2-second slice delivers on this machine).
 */
export class LatencyRecorder {
  constructor(capacity = 1 << 21) {
    this.samples = new Float64Array(capacity);
    this.count = 0;
  }

  reset() {
    this.count = 0;
  }

  add(us) {
    if (this.count < this.samples.length) this.samples[this.count++] = us;
  }

  /** p50 and p99 in milliseconds (nearest rank), null when nothing was recorded. */
  percentilesMs() {
    if (this.count === 0) return { p50Ms: null, p99Ms: null };
    const sorted = this.samples.subarray(0, this.count).sort();
    const at = (q) =>
      (sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] ?? 0) / 1000;
    return { p50Ms: at(0.5), p99Ms: at(0.99) };
  }
}

/** Median, minimum and maximum of the finite numbers among `values`; null when there are none. */
export function spread(values) {
  const finite = values
    .filter((v) => typeof v === "number" && Number.isFinite(v))
    .sort((a, b) => a - b);
  if (finite.length === 0) return null;
  const mid = finite.length >> 1;
  const median =
    finite.length % 2 === 1
      ? (finite[mid] ?? 0)
      : ((finite[mid - 1] ?? 0) + (finite[mid] ?? 0)) / 2;
  return { median, min: finite[0] ?? 0, max: finite[finite.length - 1] ?? 0 };
}
