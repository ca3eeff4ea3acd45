/**
 * The engine contract on a real Redis Cluster (3 masters, 3 replicas; testkit starts it, or
 * REDIS_CLUSTER_NODES names one): cluster mode must keep every promise standalone mode keeps.
 */
import { randomUUID } from "node:crypto";
import type { Engine } from "@mrezhen/engine";
import { engineContract } from "@mrezhen/engine/contract";
import { redisClusterForTests } from "@mrezhen/testkit";
import { afterAll, describe } from "vitest";
import { createRedisEngine } from "../src/index.js";

const cluster = await redisClusterForTests();
afterAll(() => cluster?.close());

describe.skipIf(!cluster)("redis engine on Redis Cluster", () => {
  engineContract("redis-cluster", async ({ rateLimit, retention, quotas, groups }) => {
    if (!cluster) throw new Error("unreachable: the suite is skipped without a cluster");
    const keyPrefix = `${cluster.prefix}${randomUUID().slice(0, 8)}:`;
    const engines: Engine[] = [];
    return {
      maxNodes: 3,
      node: async () => {
        if (engines.length >= 3) throw new Error("the contract asked for more than maxNodes");
        const engine = await createRedisEngine({
          url: "",
          clusterNodes: cluster.nodes,
          keyPrefix,
          nodeId: `node-${randomUUID().slice(0, 8)}`,
          rateLimit,
          ...(retention === undefined ? {} : { retention }),
          ...(quotas === undefined ? {} : { quotas }),
          ...(groups === undefined ? {} : { groups }),
        });
        engines.push(engine);
        return engine;
      },
      close: async () => {
        await Promise.all(engines.map((engine) => engine.close()));
      },
    };
  });
});
