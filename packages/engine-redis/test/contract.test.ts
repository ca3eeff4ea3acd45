import { randomUUID } from "node:crypto";
import type { Engine } from "@mrezhen/engine";
import { type BackendFactory, engineContract } from "@mrezhen/engine/contract";
import { deletePrefix, redisForTests } from "@mrezhen/testkit";
import { afterAll, describe } from "vitest";
import { createRedisEngine, type RedisEngineOptions } from "../src/index.js";

const redis = await redisForTests();
afterAll(() => redis?.close());

/** Nodes of one standalone-Redis service for the contract, with `extra` engine options. */
function standalone(extra: Partial<RedisEngineOptions> = {}): BackendFactory {
  return async ({ rateLimit, retention, quotas, groups }) => {
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
          ...extra,
        });
        engines.push(engine);
        return engine;
      },
      close: async () => {
        await Promise.all(engines.map((engine) => engine.close()));
        await deletePrefix(redis.url, keyPrefix);
      },
    };
  };
}

describe.skipIf(!redis)("redis engine", () => {
  engineContract("redis", standalone());
});

/**
 * Every group entry fanned out in chunks (groups.ts, GROUP_FAN_OUT): groups of 2 members and
 * more are chunked, 2 members a script, so that each of the contract's group entries takes the
 * queue, a numbering script and chunks.
 */
describe.skipIf(!redis)("redis engine, every group entry chunked", () => {
  engineContract("redis", standalone({ groupFanOut: { chunkAbove: 1, chunkMembers: 2 } }));
});
