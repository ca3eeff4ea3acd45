/**
 * Figures for the per-sender storage work (not a CI check: it prints, and runs only when asked):
 *
 *   MREZHEN_FIGURES=1 REDIS_URL=redis://127.0.0.1:6379 \
 *     pnpm exec vitest run packages/engine-redis/test/storage-figures.test.ts
 *
 * - memory engine: external memory held by 3,000 conversations of one sender, one 30 KB message
 *   each (the attack that stored 286 MB);
 * - both engines: the time of one conversations() call (get_conversations) for a user with
 *   40,000 peers.
 * It uses only the public engine API (plain appends: no quota), so it runs on older commits too.
 */
import { randomUUID } from "node:crypto";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { createMemoryEngine, type Engine } from "@mrezhen/engine";
import { appendInput } from "@mrezhen/engine/contract";
import { deletePrefix, redisForTests } from "@mrezhen/testkit";
import { afterAll, describe, it } from "vitest";
import { createRedisEngine } from "../src/index.js";

const enabled = process.env["MREZHEN_FIGURES"] === "1";
const redis = enabled ? await redisForTests() : undefined;
afterAll(() => redis?.close());

const RATE = { limit: 1_000_000_000, windowMs: 60_000 };
const PEERS = 40_000;

/** 5,000 control characters: JSON escapes each as \u00XX, so the stored text is about 30 KB. */
const LARGE = "\u0001".repeat(5000);

async function timeConversations(engine: Engine, user: string): Promise<string> {
  const times: number[] = [];
  for (let i = 0; i < 21; i++) {
    const started = performance.now();
    await engine.messages.conversations(user, 50);
    times.push(performance.now() - started);
  }
  times.sort((a, b) => a - b);
  return `median ${times[10]?.toFixed(3)} ms, max ${times[20]?.toFixed(3)} ms (21 calls, limit 50)`;
}

async function fillPeers(engine: Engine, user: string): Promise<void> {
  for (let first = 0; first < PEERS; first += 500) {
    await Promise.all(
      Array.from({ length: 500 }, (_, i) =>
        engine.messages.append(appendInput(user, `peer-${first + i}`, "hi")),
      ),
    );
  }
}

/** Per-message cost of appendIfAllowed (rate limit, and quotas where the engine has them). */
async function timeSends(engine: Engine, count: number): Promise<string> {
  const content = "x".repeat(64);
  const send = (i: number) =>
    engine.messages.appendIfAllowed(
      appendInput(`user-${i % 100}`, `user-${(i + 1) % 100}`, content),
    );
  for (let i = 0; i < 2000; i++) await send(i); // warm-up
  const started = performance.now();
  for (let i = 0; i < count; i++) await send(i);
  return `${((1000 * (performance.now() - started)) / count).toFixed(2)} µs per message (${count} sequential)`;
}

/** The server's defaults (engines of older commits ignore the option). */
const QUOTAS = { newConversationsPerDay: 1000, bytesPerDay: 50 * 1024 * 1024 };

describe.runIf(enabled)("storage figures", () => {
  it("appendIfAllowed: cost per message on both engines", async () => {
    const memory = createMemoryEngine({ rateLimit: RATE, quotas: QUOTAS } as Parameters<
      typeof createMemoryEngine
    >[0]);
    console.log(`[figures] memory appendIfAllowed: ${await timeSends(memory, 50_000)}`);
    await memory.close();
    if (!redis) return;
    const keyPrefix = `${redis.prefix}${randomUUID().slice(0, 8)}:`;
    const engine = await createRedisEngine({
      url: redis.url,
      keyPrefix,
      nodeId: `node-${randomUUID().slice(0, 8)}`,
      rateLimit: RATE,
      quotas: QUOTAS,
    } as Parameters<typeof createRedisEngine>[0]);
    try {
      console.log(`[figures] redis appendIfAllowed: ${await timeSends(engine, 10_000)}`);
    } finally {
      await engine.close();
      await deletePrefix(redis.url, keyPrefix);
    }
  }, 300_000);

  it("memory engine: 3,000 conversations with one 30 KB message each", async () => {
    setFlagsFromString("--expose-gc");
    const gc = runInNewContext("gc") as () => void;
    const engine = createMemoryEngine({ rateLimit: RATE });
    gc();
    const before = process.memoryUsage();
    for (let i = 0; i < 3000; i++)
      await engine.messages.append(appendInput("sender", `target-${i}`, LARGE));
    gc();
    const after = process.memoryUsage();
    const mb = (n: number) => `${(n / 1024 / 1024).toFixed(1)} MB`;
    console.log(
      `[figures] memory, 3,000 × 30 KB: arrayBuffers +${mb(after.arrayBuffers - before.arrayBuffers)}, external +${mb(after.external - before.external)}, rss +${mb(after.rss - before.rss)}`,
    );
    await engine.close();
  }, 120_000);

  it("memory engine: conversations() with 40,000 peers", async () => {
    const engine = createMemoryEngine({ rateLimit: RATE });
    await fillPeers(engine, "hub-user");
    console.log(`[figures] memory, 40,000 peers: ${await timeConversations(engine, "hub-user")}`);
    await engine.close();
  }, 120_000);

  it.runIf(redis !== undefined)(
    "redis engine: conversations() with 40,000 peers",
    async () => {
      if (!redis) return;
      const keyPrefix = `${redis.prefix}${randomUUID().slice(0, 8)}:`;
      const engine = await createRedisEngine({
        url: redis.url,
        keyPrefix,
        nodeId: `node-${randomUUID().slice(0, 8)}`,
        rateLimit: RATE,
      });
      try {
        await fillPeers(engine, "hub-user");
        console.log(
          `[figures] redis, 40,000 peers: ${await timeConversations(engine, "hub-user")}`,
        );
      } finally {
        await engine.close();
        await deletePrefix(redis.url, keyPrefix);
      }
    },
    300_000,
  );
});
