import { randomUUID } from "node:crypto";
import { Redis } from "ioredis";

export interface TestRedis {
  /** A URL any client or node can use. */
  readonly url: string;
  /** A key prefix of its own for this test file, so runs and files never see each other's data. */
  readonly prefix: string;
  /** Deletes this prefix's keys and stops a container it started. */
  close(): Promise<void>;
}

/**
 * A Redis for tests: `REDIS_URL` when set (CI sets it), otherwise a throwaway container through
 * testcontainers. When neither can be had the caller should skip, and this says so loudly; but
 * under `CI=true` a missing Redis is an error, never a skip.
 *
 * @example
 * const redis = await redisForTests();
 * describe.skipIf(!redis)("redis engine", () => { ... });
 */
export async function redisForTests(): Promise<TestRedis | undefined> {
  const prefix = `mrezhen-test:${randomUUID().slice(0, 8)}:`;
  const fromEnv = process.env["REDIS_URL"];
  if (fromEnv) {
    await assertReachable(fromEnv);
    return { url: fromEnv, prefix, close: () => deletePrefix(fromEnv, prefix) };
  }
  try {
    const { GenericContainer } = await import("testcontainers");
    const container = await new GenericContainer("redis:7-alpine").withExposedPorts(6379).start();
    const url = `redis://${container.getHost()}:${container.getMappedPort(6379)}`;
    return { url, prefix, close: async () => void (await container.stop()) };
  } catch (error) {
    const why = `no Redis for tests: REDIS_URL is not set and testcontainers failed (${String(error)})`;
    if (process.env["CI"] === "true") throw new Error(`${why}; under CI=true this is a failure.`);
    console.warn(
      `\n⚠️  SKIPPING Redis tests: ${why}.\n   Set REDIS_URL=redis://127.0.0.1:6379 to run them.\n`,
    );
    return undefined;
  }
}

async function assertReachable(url: string): Promise<void> {
  const client = new Redis(url, {
    lazyConnect: true,
    maxRetriesPerRequest: 1,
    retryStrategy: () => null,
  });
  try {
    await client.connect();
    await client.ping();
  } catch (error) {
    throw new Error(`REDIS_URL=${url} is set but Redis does not answer: ${String(error)}`);
  } finally {
    client.disconnect();
  }
}

/** Removes every key under `prefix` (SCAN, never KEYS, so a shared Redis is not blocked). */
export async function deletePrefix(url: string, prefix: string): Promise<void> {
  const client = new Redis(url, { maxRetriesPerRequest: 1 });
  try {
    let cursor = "0";
    do {
      const [next, keys] = await client.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 500);
      cursor = next;
      if (keys.length > 0) await client.unlink(...keys);
    } while (cursor !== "0");
  } finally {
    client.disconnect();
  }
}
