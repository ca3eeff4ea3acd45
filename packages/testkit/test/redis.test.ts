import { spawnSync } from "node:child_process";
import { Redis } from "ioredis";
import { describe, expect, it } from "vitest";
import { findLocalRedis, freePort } from "../src/index.js";

const haveRedisServer = spawnSync("redis-server", ["--version"]).status === 0;
if (!haveRedisServer) {
  if (process.env["CI"] === "true")
    throw new Error("redis-server is not installed; under CI=true this is a failure.");
  console.warn("\n⚠️  SKIPPING the private redis-server test: redis-server is not installed.\n");
}

describe.skipIf(!haveRedisServer)("findLocalRedis", () => {
  it("starts a private redis-server when nothing answers where a local Redis would be, and stops it", async () => {
    const nobody = `redis://127.0.0.1:${await freePort()}`;
    const redis = await findLocalRedis(nobody);
    expect(redis).toMatchObject({ source: "private redis-server" });
    if (redis === undefined) return;
    expect(redis.url).not.toBe(nobody);
    // Asked again in the same process, it gives the same server rather than another one.
    expect((await findLocalRedis(nobody))?.url).toBe(redis.url);
    const client = new Redis(redis.url, { maxRetriesPerRequest: 0, retryStrategy: () => null });
    client.on("error", () => {});
    expect(await client.ping()).toBe("PONG");
    await redis.stop();
    await expect(client.ping()).rejects.toThrow();
    client.disconnect();
  });

  it("uses a Redis that answers where a local one would be, and leaves it running", async () => {
    const first = await findLocalRedis(`redis://127.0.0.1:${await freePort()}`);
    if (first === undefined) throw new Error("no private redis-server");
    try {
      const found = await findLocalRedis(first.url);
      expect(found).toMatchObject({ url: first.url, source: "local" });
      await found?.stop();
      const client = new Redis(first.url, { maxRetriesPerRequest: 0 });
      expect(await client.ping()).toBe("PONG");
      client.disconnect();
    } finally {
      await first.stop();
    }
  });
});
