import { memoryStoredBytes } from "@mrezhen/engine";
import { ConfigError, loadConfig } from "@mrezhen/server";
import type { TestClient } from "@mrezhen/testkit";
import { describe, expect, it } from "vitest";
import { startNode } from "./helpers.js";

const DAY_MS = 86_400_000;
/** 5,000 control characters: the stored JSON escapes each as \u00XX, about 30 KB in all. */
const LARGE = "\u0001".repeat(5000);

/** Sends `count` messages (to `to(i)`), then waits for as many acks and errors: their counts. */
async function sendAll(
  client: TestClient,
  count: number,
  to: (i: number) => string,
  content: string,
): Promise<{ acked: number; refused: Record<string, unknown>[] }> {
  for (let i = 0; i < count; i++) client.send({ type: "direct_message", to: to(i), content });
  let acked = 0;
  const refused: Record<string, unknown>[] = [];
  for (let i = 0; i < count; i++) {
    const frame = await client.next(["message_ack", "error"], 10_000);
    if (frame.type === "message_ack") acked++;
    else refused.push(frame);
  }
  return { acked, refused };
}

describe("per-sender daily quotas", () => {
  it("refuses new conversations past the quota with RATE_LIMITED, naming the limit", async () => {
    const node = await startNode({ QUOTA_NEW_CONVERSATIONS_PER_DAY: "2" });
    const alice = await node.connect("alice");
    const { acked, refused } = await sendAll(alice, 3, (i) => `friend-${i}`, "hello");
    expect(acked).toBe(2);
    const [error] = refused;
    expect(error).toMatchObject({
      type: "error",
      code: "RATE_LIMITED",
      limit: "new_conversations_per_day",
    });
    expect(error?.["message"]).toMatch(/at most 2 new conversations per UTC day/);
    const retryAfterMs = error?.["retryAfterMs"] as number;
    expect(retryAfterMs).toBeGreaterThan(0);
    expect(retryAfterMs).toBeLessThanOrEqual(DAY_MS);
    expect(error?.["message"]).toContain(`retry in ${retryAfterMs} ms`);
    // Known peers still get messages: the refusal was for that message, not for the day.
    alice.send({ type: "direct_message", to: "friend-0", content: "still here" });
    expect(await alice.next(["message_ack", "error"])).toMatchObject({ type: "message_ack" });
  });

  it("refuses a sender's messages past the stored bytes of the day", async () => {
    const node = await startNode({ QUOTA_BYTES_PER_DAY: "65536" });
    const alice = await node.connect("alice");
    const { acked, refused } = await sendAll(alice, 3, () => "bob", LARGE);
    expect(acked).toBe(2); // about 30 KB each
    expect(refused[0]).toMatchObject({ code: "RATE_LIMITED", limit: "bytes_per_day" });
    expect(refused[0]?.["message"]).toMatch(/at most 65536 bytes of stored messages per UTC day/);
  });

  it("bounds what one sender writing to many distinct ids stores on a node", async () => {
    // What the memory engine's logs hold (NaN where there is no such count, e.g. older commits).
    const stored = typeof memoryStoredBytes === "function" ? memoryStoredBytes : () => Number.NaN;
    const quotaBytes = 4 * 1024 * 1024;
    const node = await startNode({
      QUOTA_NEW_CONVERSATIONS_PER_DAY: "200",
      QUOTA_BYTES_PER_DAY: String(quotaBytes),
      RATE_LIMIT_MESSAGES: "1000000",
    });
    const small = await node.connect("mallory-small");
    const large = await node.connect("mallory-large");
    const before = stored();
    // Small messages to 1,000 ids: the new-conversation quota stops them at 200.
    const bySmall = await sendAll(small, 1000, (i) => `victim-${i}`, "hi");
    // 30 KB messages to 1,000 ids: the byte quota stops them at 4 MiB (about 139 messages).
    const byLarge = await sendAll(large, 1000, (i) => `target-${i}`, LARGE);
    const grown = stored() - before;
    console.log(
      `[figures] attack: ${bySmall.acked} + ${byLarge.acked} of 2,000 stored, +${(grown / 1024 / 1024).toFixed(1)} MB stored`,
    );
    expect(bySmall.acked).toBe(200);
    expect(new Set(bySmall.refused.map((f) => f["limit"]))).toEqual(
      new Set(["new_conversations_per_day"]),
    );
    expect(byLarge.acked).toBeGreaterThan(100);
    expect(byLarge.acked).toBeLessThan(200);
    expect(new Set(byLarge.refused.map((f) => f["limit"]))).toEqual(new Set(["bytes_per_day"]));
    // The bound: the byte quota (texts at most 1/8 over their size in their chunks) plus small
    // per-conversation and per-inbox rows. Without quotas (and with power-of-two chunks) the
    // same attack stored 1,000 × 128 KiB for the large sender alone.
    expect(grown).toBeLessThan(quotaBytes * 1.125 + 4 * 1024 * 1024);
  }, 60_000);
});

describe("per-user limits on reads and typing", () => {
  it("limits get_history, get_conversations and get_online_users per user, reading nothing past it", async () => {
    const node = await startNode({ READ_RATE_LIMIT: "1" });
    const quiet = { query: "&presence=off" };
    const tab1 = await node.connect("alice", quiet);
    const tab2 = await node.connect("alice", quiet);
    tab1.send({ type: "get_conversations" });
    expect(await tab1.next()).toMatchObject({ type: "conversations" });
    // Another connection of the same user shares the budget.
    tab2.send({ type: "get_history", with: "bob" });
    tab2.send({ type: "get_online_users" });
    for (let i = 0; i < 2; i++) {
      const error = await tab2.next();
      expect(error).toMatchObject({ type: "error", code: "RATE_LIMITED", limit: "reads" });
      expect(error["retryAfterMs"]).toBeGreaterThan(0);
      expect(error["retryAfterMs"]).toBeLessThanOrEqual(1000);
      expect(error["message"]).toMatch(/at most 1 get_history.*per second.*Nothing was read/);
    }
    // Other users have their own budget.
    const bob = await node.connect("bob", quiet);
    bob.send({ type: "get_online_users" });
    expect(await bob.next()).toMatchObject({ type: "online_users" });
    // The bucket refills.
    await new Promise((resolve) => setTimeout(resolve, 1100));
    tab2.send({ type: "get_online_users" });
    expect(await tab2.next()).toMatchObject({ type: "online_users" });
  });

  it("relays at most 4 typing frames a second per user, however many connections it has", async () => {
    const node = await startNode();
    const bob = await node.connect("bob");
    const tabs = [await node.connect("alice"), await node.connect("alice")];
    // All sent at the start of one second, so one budget applies.
    await new Promise((resolve) => setTimeout(resolve, 1000 - (Date.now() % 1000) + 20));
    for (let i = 0; i < 8; i++)
      tabs[i % 2]?.send({ type: "typing", to: "bob", state: i % 2 ? "stop" : "start" });
    for (const tab of tabs) {
      tab.send({ type: "ping" });
      await tab.next("pong");
    }
    bob.send({ type: "ping" });
    await bob.next("pong");
    expect(bob.drain("typing")).toHaveLength(4);
  });
});

describe("limit configuration", () => {
  it("has defaults, and refuses values out of range with a clear error", () => {
    expect(loadConfig({})).toMatchObject({
      quotas: { newConversationsPerDay: 1000, bytesPerDay: 50 * 1024 * 1024 },
      readRateLimit: 20,
    });
    expect(() => loadConfig({ QUOTA_BYTES_PER_DAY: "1000" })).toThrow(
      new ConfigError(
        'QUOTA_BYTES_PER_DAY must be a whole number from 65536 to 1000000000000000; got "1000".',
      ),
    );
    expect(() => loadConfig({ QUOTA_NEW_CONVERSATIONS_PER_DAY: "0" })).toThrow(ConfigError);
    expect(() => loadConfig({ READ_RATE_LIMIT: "fast" })).toThrow(/READ_RATE_LIMIT must be/);
  });
});
