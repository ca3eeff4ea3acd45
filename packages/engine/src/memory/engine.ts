import {
  DEFAULT_GROUP_LIMITS,
  type Engine,
  type EngineHealth,
  type GroupLimits,
  NO_QUOTAS,
  type QuotaOptions,
  type RateLimitOptions,
  type RetentionOptions,
} from "../ports.js";
import { MemoryBroker } from "./broker.js";
import { MemoryEventQueue } from "./event-queue.js";
import { MemoryGroupStore } from "./groups.js";
import { MemoryMessageStore } from "./messages.js";
import { MemoryPresenceStore } from "./presence.js";
import { MemoryRateLimiter } from "./rate-limiter.js";
import { MemoryRevocationStore } from "./revocations.js";

export interface MemoryEngineOptions {
  readonly rateLimit: RateLimitOptions;
  /** Default {@link DEFAULT_RETENTION}. */
  readonly retention?: RetentionOptions;
  /** Per-sender daily quotas of appendIfAllowed. Default {@link NO_QUOTAS}. */
  readonly quotas?: QuotaOptions;
  /** Default {@link DEFAULT_GROUP_LIMITS}. */
  readonly groups?: GroupLimits;
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
  const now = options.now ?? Date.now;
  const rateLimiter = new MemoryRateLimiter(options.rateLimit, now);
  const messages = new MemoryMessageStore(
    broker,
    presence,
    rateLimiter,
    options.retention ?? DEFAULT_RETENTION,
    options.quotas ?? NO_QUOTAS,
    now,
  );
  const groups = new MemoryGroupStore(
    messages,
    broker,
    presence,
    rateLimiter,
    options.groups ?? DEFAULT_GROUP_LIMITS,
    options.retention ?? DEFAULT_RETENTION,
    now,
  );
  const sweep = setInterval(() => {
    messages.sweep();
    groups.sweep();
  }, SWEEP_INTERVAL_MS);
  sweep.unref();
  return {
    kind: "memory",
    broker,
    presence,
    messages,
    rateLimiter,
    groups,
    revocations: new MemoryRevocationStore(),
    events: new MemoryEventQueue(now),
    health: () => HEALTHY,
    close: async () => {
      clearInterval(sweep);
      rateLimiter.close();
    },
  };
}

/** Thirty days, and 10,000 entries per inbox, queue and conversation index. */
export const DEFAULT_RETENTION: RetentionOptions = {
  messageTtlMs: 30 * 24 * 60 * 60 * 1000,
  maxEntries: 10_000,
};

const SWEEP_INTERVAL_MS = 60_000;

const HEALTHY: EngineHealth = { ok: true };
