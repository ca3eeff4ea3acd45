import { randomUUID } from "node:crypto";
import type { Engine } from "@mrezhen/engine";
import { engineContract } from "@mrezhen/engine/contract";
import { deletePrefix, redisForTests } from "@mrezhen/testkit";
import { afterAll, describe } from "vitest";
import { createRedisEngine } from "../src/index.js";

const redis = await redisForTests();
afterAll(() => redis?.close());

describe.skipIf(!redis)("redis engine", () => {
  engineContract("redis", async ({ rateLimit, retention, quotas, groups }) => {
    if (!redis) throw new Error("unreachable: the suite is skipped without Redis");
    // A prefix per backend: the contract's tests never see each other's keys, nor other files'.
    const keyPrefix = `${redis.prefix}${randomUUID().slice(0, 8)}:`;
    const engines: Engine[] = [];
    return {
      maxNodes: 3,
      node: async () => {
        if (engines.length >= 3) throw new Error("the contract asked for more than maxNodes");
        const engine = await createRedisEngine({
          url: redis.url,
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
        await deletePrefix(redis.url, keyPrefix);
      },
    };
  });
});
