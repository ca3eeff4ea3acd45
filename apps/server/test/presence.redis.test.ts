import { randomUUID } from "node:crypto";
import { type Frame, redisForTests, type TestClient } from "@mrezhen/testkit";
import { afterAll, describe, expect, it } from "vitest";
import { startNode, type TestNode } from "./helpers.js";

const redis = await redisForTests();
afterAll(() => redis?.close());

const WINDOW_MS = 300;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const about = (client: TestClient, userId: string): Frame[] =>
  client.received.filter((frame) => frame.type === "presence" && frame["userId"] === userId);
const presenceFrames = (client: TestClient): Frame[] =>
  client.received.filter((frame) => frame.type === "presence");
/** See presence.test.ts: frames one listener may get about changes spanning `spanMs`. */
const bound = (spanMs: number) => 3 + Math.floor(spanMs / WINDOW_MS);

/** Two real nodes on one Redis, under a key prefix of their own. */
async function cluster(): Promise<[TestNode, TestNode]> {
  if (redis === undefined) throw new Error("unreachable: suite skipped without Redis");
  const prefix = `${redis.prefix}${randomUUID().slice(0, 6)}:`;
  const env = { REDIS_URL: redis.url, REDIS_KEY_PREFIX: prefix, PRESENCE_COALESCE_MS: "300" };
  return [
    await startNode({ ...env, NODE_ID: "node-1" }),
    await startNode({ ...env, NODE_ID: "node-2" }),
  ];
}

describe.skipIf(!redis)("presence floods are bounded across nodes", () => {
  it("coalesces a user flapping across two nodes, gives contacts deltas only, and ends on the real state", async () => {
    const [a, b] = await cluster();
    const writer = await a.connect("alice");
    writer.send({ type: "direct_message", to: "carol", content: "hello" });
    await writer.next("message_ack");
    await writer.close();
    await sleep(2 * WINDOW_MS);

    const carol = await a.connect("carol", { query: "&presence=contacts" });
    const dave = await b.connect("dave", { query: "&presence=contacts" }); // a stranger
    const erin = await b.connect("erin"); // the default mode: every user, with the list

    const started = performance.now();
    for (let i = 0; i < 10; i++) await (await (i % 2 === 0 ? a : b).connect("alice")).close();
    const alice = await b.connect("alice");
    const spanMs = performance.now() - started;
    await sleep(3 * WINDOW_MS);

    for (const listener of [carol, erin]) {
      const frames = about(listener, "alice");
      expect(frames.length).toBeGreaterThanOrEqual(1);
      expect(frames.length).toBeLessThanOrEqual(bound(spanMs));
      expect(frames.at(-1)?.["status"]).toBe("online");
    }
    for (const frame of about(carol, "alice")) expect(frame).not.toHaveProperty("onlineUsers");
    expect(presenceFrames(carol).every((frame) => frame["userId"] === "alice")).toBe(true);
    expect(presenceFrames(dave)).toEqual([]);

    // Asked on either node, about these users only.
    carol.send({ type: "get_online_users", users: ["alice", "dave", "zed"] });
    expect(await carol.next("online_users")).toEqual({
      type: "online_users",
      users: ["alice", "dave"],
    });

    await alice.close();
    await sleep(3 * WINDOW_MS);
    expect(about(carol, "alice").at(-1)).toEqual({
      type: "presence",
      userId: "alice",
      status: "offline",
    });
    expect(about(erin, "alice").at(-1)).toMatchObject({ status: "offline" });
  });

  it("tells a contact that connects on another node who of its contacts is online", async () => {
    const [a, b] = await cluster();
    const writer = await a.connect("alice");
    writer.send({ type: "direct_message", to: "carol", content: "hello" });
    await writer.next("message_ack");
    await sleep(2 * WINDOW_MS);
    const carol = await b.connect("carol", { query: "&presence=contacts" });
    expect(about(carol, "alice")).toEqual([
      { type: "presence", userId: "alice", status: "online" },
    ]);
  });
});
