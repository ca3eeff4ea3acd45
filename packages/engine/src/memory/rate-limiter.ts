import type { RateDecision, RateLimiter, RateLimitOptions } from "../ports.js";

/** The timestamps of the last `limit` allowed actions of one key, oldest at `head`. */
interface Window {
  readonly times: number[];
  head: number;
}

/**
 * An exact sliding-window limiter: it remembers the time of each of the last `limit` allowed
 * actions per key (a ring buffer, so memory per key is bounded by `limit`), and allows one more
 * when the oldest of them left the window. Keys idle for a whole window are swept.
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
    const now = this.now();
    const window = this.windows.get(key);
    if (window === undefined) {
      this.windows.set(key, { times: [now], head: 0 });
      return ALLOWED;
    }
    if (window.times.length < this.options.limit) {
      window.times.push(now);
      return ALLOWED;
    }
    const oldest = window.times[window.head] as number;
    const retryAfterMs = oldest + this.options.windowMs - now;
    if (retryAfterMs > 0) return { allowed: false, retryAfterMs };
    window.times[window.head] = now;
    window.head = (window.head + 1) % window.times.length;
    return ALLOWED;
  }

  close(): void {
    clearInterval(this.sweepTimer);
  }

  private sweep(): void {
    const horizon = this.now() - this.options.windowMs;
    for (const [key, window] of this.windows) {
      const newest = window.times[(window.head + window.times.length - 1) % window.times.length];
      if (newest === undefined || newest <= horizon) this.windows.delete(key);
    }
  }
}

const ALLOWED: RateDecision = { allowed: true, retryAfterMs: 0 };
