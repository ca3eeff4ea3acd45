/**
 * RateLimiter on Redis: an exact sliding window per key, one EVALSHA per call (CONSUME in
 * scripts.ts). The window is a list `<p>rate-log:<key>` of the times of the last allowed actions
 * (at most `limit`), by Redis' own clock in microseconds, so every node counts against the same
 * window and the nodes' clocks do not matter. The key expires one window after its last allowed
 * action.
 */
import type { RateDecision, RateLimiter, RateLimitOptions } from "@mrezhen/engine";
import type { Keys } from "./keys.js";
import { integers, type RedisClient, runScript } from "./script-runner.js";
import { CONSUME } from "./scripts.js";

export class RedisRateLimiter implements RateLimiter {
  constructor(
    private readonly client: RedisClient,
    private readonly keys: Keys,
    private readonly options: RateLimitOptions,
  ) {}

  async consume(key: string): Promise<RateDecision> {
    const reply = await runScript(this.client, CONSUME, [
      this.keys.rate(key),
      this.options.limit,
      this.options.windowMs,
    ]);
    const [allowed, retryAfterMs] = integers<[number, number]>(reply, 2, "consume");
    return allowed === 1 ? ALLOWED : { allowed: false, retryAfterMs };
  }
}

const ALLOWED: RateDecision = { allowed: true, retryAfterMs: 0 };
