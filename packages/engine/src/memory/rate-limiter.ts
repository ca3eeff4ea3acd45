import type { RateDecision, RateLimiter, RateLimitOptions } from "../ports.js";

/**
 * The times of one key's allowed actions still in the window, oldest first: a ring buffer that
 * grows (by doubling, up to `limit`) only while more actions are in the window.
 */
interface Window {
  times: Float64Array;
  head: number;
  count: number;
}

const INITIAL_CAPACITY = 8;

/**
 * An exact sliding-window limiter: it remembers the time of each allowed action still in the
 * window, and allows one more while fewer than `limit` are. Memory per key is bounded by both
 * `limit` and the actions of one window, so a huge limit (a rate limit set out of the way) costs
 * no more than the traffic; the times sit in a typed array, not in the V8 heap's objects, and a
 * decision allocates nothing. Keys idle for a whole window are swept.
 */
export class MemoryRateLimiter implements RateLimiter {
  private readonly windows = new Map<string, Window>();
  private readonly sweepTimer: NodeJS.Timeout;

  constructor(
    private readonly options: RateLimitOptions,
    private readonly now: () => number = Date.now,
  ) {
    this.sweepTimer = setInterval(() => this.sweep(), Math.max(options.windowMs, 1000));
    this.sweepTimer.unref();
  }

  async consume(key: string): Promise<RateDecision> {
    return this.decide(key);
  }

  /** consume, synchronously: for the message store, which decides and stores in one step. */
  decide(key: string): RateDecision {
    const now = this.now();
    let window = this.windows.get(key);
    if (window === undefined) {
      const capacity = Math.min(this.options.limit, INITIAL_CAPACITY);
      window = { times: new Float64Array(capacity), head: 0, count: 0 };
      this.windows.set(key, window);
    }
    const { times } = window;
    // Forget the actions that left the window: an action at t counts while t > now - windowMs.
    const horizon = now - this.options.windowMs;
    while (window.count > 0 && (times[window.head] as number) <= horizon) {
      window.head = (window.head + 1) % times.length;
      window.count--;
    }
    if (window.count >= this.options.limit) {
      return { allowed: false, retryAfterMs: (times[window.head] as number) - horizon };
    }
    if (window.count === times.length) grow(window, this.options.limit);
    window.times[(window.head + window.count) % window.times.length] = now;
    window.count++;
    return ALLOWED;
  }

  close(): void {
    clearInterval(this.sweepTimer);
  }

  private sweep(): void {
    const horizon = this.now() - this.options.windowMs;
    for (const [key, { times, head, count }] of this.windows) {
      const newest = times[(head + count - 1) % times.length];
      if (count === 0 || (newest as number) <= horizon) this.windows.delete(key);
    }
  }
}

/** Doubles a full window's ring (up to `limit`), its oldest time moving to index 0. */
function grow(window: Window, limit: number): void {
  const { times, head } = window;
  const larger = new Float64Array(Math.min(limit, times.length * 2));
  larger.set(times.subarray(head));
  larger.set(times.subarray(0, head), times.length - head);
  window.times = larger;
  window.head = 0;
}

const ALLOWED: RateDecision = { allowed: true, retryAfterMs: 0 };
