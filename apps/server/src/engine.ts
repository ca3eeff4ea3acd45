import { createMemoryEngine, type Engine } from "@mrezhen/engine";
import type { Logger } from "./chat/ports.js";
import type { Config } from "./config.js";

/**
 * The engine the config asks for: Redis when REDIS_URL (one Redis) or REDIS_CLUSTER_NODES (a
 * Redis Cluster) is set, else the embedded memory engine.
 */
export async function createEngine(config: Config, log: Logger): Promise<Engine> {
  if (config.redis === undefined) {
    return createMemoryEngine({
      rateLimit: config.rateLimit,
      retention: config.retention,
      quotas: config.quotas,
      groups: config.groups,
    });
  }
  const { createRedisEngine } = await import("@mrezhen/engine-redis");
  return createRedisEngine({
    url: config.redis.url,
    ...(config.redis.clusterNodes === undefined ? {} : { clusterNodes: config.redis.clusterNodes }),
    waitReplicas: config.redis.waitReplicas,
    keyPrefix: config.redis.keyPrefix,
    nodeId: config.nodeId,
    rateLimit: config.rateLimit,
    retention: config.retention,
    quotas: config.quotas,
    groups: config.groups,
    groupFanOut: config.groupFanOut,
    logger: log.child({ component: "engine" }),
    // A node started before its Redis comes up unready and starts serving when Redis answers,
    // instead of exiting into a restart loop (compose, Kubernetes).
    waitForRedis: true,
  });
}
