import type { Engine, EngineHealth, RateLimitOptions } from "../ports.js";
import { MemoryBroker } from "./broker.js";
import { MemoryMessageStore } from "./messages.js";
import { MemoryPresenceStore } from "./presence.js";
import { MemoryRateLimiter } from "./rate-limiter.js";

export interface MemoryEngineOptions {
  readonly rateLimit: RateLimitOptions;
  /** The clock, for tests of the rate limiter. */
  readonly now?: () => number;
}

/**
 * The embedded engine: every port in process memory, for one node. It is the default when no
 * REDIS_URL is configured, so a node needs no infrastructure to run.
 */
export function createMemoryEngine(options: MemoryEngineOptions): Engine {
  const broker = new MemoryBroker();
  const presence = new MemoryPresenceStore(broker);
  const messages = new MemoryMessageStore(broker, presence);
  const rateLimiter = new MemoryRateLimiter(options.rateLimit, options.now);
  return {
    kind: "memory",
    broker,
    presence,
    messages,
    rateLimiter,
    health: () => HEALTHY,
    close: async () => rateLimiter.close(),
  };
}

const HEALTHY: EngineHealth = { ok: true };
