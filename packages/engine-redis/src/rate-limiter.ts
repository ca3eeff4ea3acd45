/**
 * RateLimiter on Redis: an exact sliding window per key, one EVALSHA per call (CONSUME in
 * scripts.ts). The window is a sorted set `<p>rate:<key>` of the last `limit` allowed actions,
 * scored by Redis' own clock in microseconds, so every node counts against the same window and
 * the nodes' clocks do not matter. The key expires one window after its last allowed action.
 */
import type { RateDecision, RateLimiter, RateLimitOptions } from "@mrezhen/engine";
import type { Redis } from "ioredis";
import type { Keys } from "./keys.js";
import { integers, runScript } from "./script-runner.js";
import { CONSUME } from "./scripts.js";

export class RedisRateLimiter implements RateLimiter {
  /** Makes each recorded action a distinct set member, even two in the same microsecond. */
  private counter = 0;

  constructor(
    private readonly client: Redis,
    private readonly keys: Keys,
    private readonly options: RateLimitOptions,
    private readonly memberTag: string,
  ) {}

  async consume(key: string): Promise<RateDecision> {
    this.counter = (this.counter + 1) % Number.MAX_SAFE_INTEGER;
    const reply = await runScript(this.client, CONSUME, [
      this.keys.rate(key),
      this.options.limit,
      this.options.windowMs,
      `${this.memberTag}:${this.counter}`,
    ]);
    const [allowed, retryAfterMs] = integers<[number, number]>(reply, 2, "consume");
    return allowed === 1 ? ALLOWED : { allowed: false, retryAfterMs };
  }
}

const ALLOWED: RateDecision = { allowed: true, retryAfterMs: 0 };
