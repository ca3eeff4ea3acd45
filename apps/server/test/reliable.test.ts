import { randomUUID } from "node:crypto";
import {
  type Frame,
  mintToken,
  redisForTests,
  TestClient,
  type UpgradeRefused,
} from "@mrezhen/testkit";
import { afterAll, describe, expect, it, onTestFinished } from "vitest";
import { startNode, type TestNode } from "./helpers.js";

const redis = await redisForTests();
afterAll(() => redis?.close());

type Message = {
  id: string;
  from: string;
  to: string;
  content: string;
  seq: number;
  clientMsgId?: string;
};
const messageOf = (frame: Frame) => frame["message"] as Message;

/** Two entry points into one service: two nodes on Redis, or the same memory node twice. */
const backends: [string, (env?: Record<string, string>) => Promise<[TestNode, TestNode]>][] = [
  [
    "memory engine",
    async (env = {}) => {
      const node = await startNode({ RATE_LIMIT_MESSAGES: "100000", ...env });
      return [node, node];
    },
  ],
];
if (redis !== undefined) {
  backends.push([
    "redis engine, two nodes",
    async (env = {}) => {
      const prefix = `${redis.prefix}${randomUUID().slice(0, 6)}:`;
      const shared = {
        REDIS_URL: redis.url,
        REDIS_KEY_PREFIX: prefix,
        RATE_LIMIT_MESSAGES: "100000",
        ...env,
      };
      return [
        await startNode({ ...shared, NODE_ID: "a" }),
        await startNode({ ...shared, NODE_ID: "b" }),
      ];
    },
  ]);
}

/** Connects with `?since=N` (acknowledged delivery) and returns the replay up to `synced`. */
async function syncFrom(node: TestNode, userId: string, since: number) {
  const token = await mintToken({ sub: userId });
  const client = await TestClient.connect(`${node.wsUrl}?token=${token}&since=${since}`);
  onTestFinished(() => void client.close());
  const synced = await client.next("synced", 10_000);
  return { client, replayed: client.drain("direct_message"), synced };
}

describe.each(backends)("reliable delivery (%s)", (_name, service) => {
  it("stores a retried clientMsgId once and answers with the same ack, from another node too", async () => {
    const [a, b] = await service();
    const bob = await b.connect("bob");
    const alice = await a.connect("alice");
    alice.send({ type: "direct_message", to: "bob", content: "exactly once", clientMsgId: "c-1" });
    const first = await alice.next("message_ack");
    expect(first).toMatchObject({ clientMsgId: "c-1", status: "delivered", seq: 1 });
    expect(first["position"]).toBe(1);
    await alice.close();

    const aliceRetry = await b.connect("alice");
    aliceRetry.send({
      type: "direct_message",
      to: "bob",
      content: "exactly once",
      clientMsgId: "c-1",
    });
    const second = await aliceRetry.next("message_ack");
    expect(second).toEqual(first);

    expect(messageOf(await bob.next("direct_message"))).toMatchObject({
      id: first["messageId"],
      clientMsgId: "c-1",
    });
    await bob.expectNone("direct_message", 300);
    bob.send({ type: "get_history", with: "alice" });
    expect(((await bob.next("message_history"))["messages"] as Message[]).length).toBe(1);
  });

  it("replays the inbox after `since`, then synced, and carries positions on live frames", async () => {
    const [a, b] = await service();
    const alice = await a.connect("alice");
    for (let i = 1; i <= 3; i++) {
      alice.send({ type: "direct_message", to: "bob", content: `m${i}` });
      await alice.next("message_ack");
    }
    const { client: bob, replayed, synced } = await syncFrom(b, "bob", 1);
    expect(replayed.map((f) => [f["position"], messageOf(f).content, f["queued"]])).toEqual([
      [2, "m2", undefined],
      [3, "m3", undefined],
    ]);
    expect(synced).toEqual({ type: "synced", position: 3 });

    alice.send({ type: "direct_message", to: "bob", content: "live" });
    const live = await bob.next("direct_message");
    expect([live["position"], messageOf(live).content]).toEqual([4, "live"]);

    // `sync` on the open connection replays again from any position.
    bob.send({ type: "sync", since: 3 });
    expect((await bob.next("direct_message"))["position"]).toBe(4);
    expect(await bob.next("synced")).toEqual({ type: "synced", position: 4 });
  });

  it("loses nothing and doubles nothing at the seam: a 1,000-message backlog replayed under live traffic", async () => {
    const [a, b] = await service();
    const alice = await a.connect("alice");
    for (let i = 0; i < 1000; i++)
      alice.send({ type: "direct_message", to: "bob", content: `backlog ${i}` });
    for (let i = 0; i < 1000; i++) await alice.next("message_ack");

    const token = await mintToken({ sub: "bob" });
    const connecting = TestClient.connect(`${b.wsUrl}?token=${token}&since=0`);
    for (let i = 0; i < 300; i++)
      alice.send({ type: "direct_message", to: "bob", content: `live ${i}` });
    const bob = await connecting;
    onTestFinished(() => void bob.close());
    for (let i = 0; i < 300; i++) await alice.next("message_ack", 10_000);

    const seen = new Map<string, number>();
    const deadline = Date.now() + 15_000;
    while (seen.size < 1300 && Date.now() < deadline) {
      const frame = await bob.next("direct_message", 10_000);
      seen.set(messageOf(frame).id, frame["position"] as number);
    }
    const positions = [...seen.values()];
    expect(positions).toHaveLength(1300);
    expect(positions).toEqual(Array.from({ length: 1300 }, (_, i) => i + 1)); // in order, no gap
    const received = bob.received.filter((f) => f.type === "direct_message");
    console.log(
      `[measure] seam: ${received.length} frames for 1300 messages (${received.length - 1300} duplicates)`,
    );
  }, 60_000);

  it("sends delivered receipts when a device acks, and the latest one on the sender's next sync", async () => {
    const [a, b] = await service();
    const { client: bob } = await syncFrom(b, "bob", 0);
    const alice = await a.connect("alice");
    for (let i = 1; i <= 2; i++)
      alice.send({ type: "direct_message", to: "bob", content: `m${i}` });
    const positions = [
      (await bob.next("direct_message"))["position"],
      (await bob.next("direct_message"))["position"],
    ];
    bob.send({ type: "ack", upTo: positions[0] });
    expect(await alice.next("receipt")).toEqual({
      type: "receipt",
      kind: "delivered",
      from: "bob",
      upTo: 1,
    });
    bob.send({ type: "ack", upTo: positions[0] }); // no advance, no receipt
    await alice.expectNone("receipt", 300);
    await alice.close();
    bob.send({ type: "ack", upTo: positions[1] });
    bob.send({ type: "ping" });
    await bob.next("pong");

    const { client: aliceAgain, synced } = await syncFrom(a, "alice", 2);
    expect(synced["position"]).toBe(2);
    expect(aliceAgain.received.filter((f) => f.type === "receipt")).toEqual([
      { type: "receipt", kind: "delivered", from: "bob", upTo: 2 },
    ]);
  });

  it("sends read receipts and counts unread per conversation", async () => {
    const [a, b] = await service();
    const alice = await a.connect("alice");
    const bob = await b.connect("bob");
    for (let i = 1; i <= 3; i++) {
      alice.send({ type: "direct_message", to: "bob", content: `m${i}` });
      await alice.next("message_ack");
    }
    bob.send({ type: "get_conversations" });
    const before = (await bob.next("conversations"))["items"] as {
      with: string;
      unread: number;
      lastMessage: Message;
    }[];
    expect(before).toEqual([
      { with: "alice", unread: 3, lastMessage: expect.objectContaining({ content: "m3", seq: 3 }) },
    ]);
    bob.send({ type: "mark_read", with: "alice", upTo: 2 });
    expect(await alice.next("receipt")).toEqual({
      type: "receipt",
      kind: "read",
      from: "bob",
      upTo: 2,
    });
    bob.send({ type: "get_conversations", limit: 10 });
    expect(((await bob.next("conversations"))["items"] as { unread: number }[])[0]?.unread).toBe(1);
  });

  it("copies a sent message to the sender's other devices, and to an offline device on its sync", async () => {
    const [a, b] = await service();
    const phone = await a.connect("alice");
    const laptop = await b.connect("alice");
    phone.send({ type: "direct_message", to: "bob", content: "from my phone" });
    const ack = await phone.next("message_ack");
    const copy = await laptop.next("direct_message");
    expect(messageOf(copy)).toMatchObject({ id: ack["messageId"], from: "alice", to: "bob" });
    expect(copy["position"]).toBe(ack["position"]);
    await phone.expectNone("direct_message", 200);

    const { replayed } = await syncFrom(b, "alice", 0);
    expect(replayed.map((f) => messageOf(f).content)).toEqual(["from my phone"]);
  });

  it("relays typing to the recipient, throttled, and never stores it", async () => {
    const [a, b] = await service();
    const bob = await b.connect("bob");
    const alice = await a.connect("alice");
    for (let i = 0; i < 20; i++)
      alice.send({ type: "typing", to: "bob", state: i % 2 ? "stop" : "start" });
    alice.send({ type: "ping" });
    await alice.next("pong");
    expect(await bob.next("typing")).toEqual({ type: "typing", from: "alice", state: "start" });
    await new Promise((resolve) => setTimeout(resolve, 300));
    const typing = 1 + bob.drain("typing").length;
    expect(typing).toBeGreaterThanOrEqual(1);
    expect(typing).toBeLessThanOrEqual(8); // at most 4 a second, over at most two seconds
    const { replayed } = await syncFrom(a, "bob", 0);
    expect(replayed).toEqual([]);
  });

  it("pages history with before and hasMore", async () => {
    const [a] = await service();
    const alice = await a.connect("alice");
    for (let i = 1; i <= 5; i++) {
      alice.send({ type: "direct_message", to: "bob", content: `m${i}` });
      await alice.next("message_ack");
    }
    alice.send({ type: "get_history", with: "bob", limit: 2 });
    const newest = await alice.next("message_history");
    expect((newest["messages"] as Message[]).map((m) => m.seq)).toEqual([4, 5]);
    expect(newest["hasMore"]).toBe(true);
    alice.send({ type: "get_history", with: "bob", limit: 10, before: 4 });
    const rest = await alice.next("message_history");
    expect((rest["messages"] as Message[]).map((m) => m.seq)).toEqual([1, 2, 3]);
    expect(rest["hasMore"]).toBe(false);
  });

  it("says which positions retention removed instead of skipping them silently", async () => {
    const [a, b] = await service({ RETENTION_MAX_ENTRIES: "10" });
    const alice = await a.connect("alice");
    for (let i = 1; i <= 15; i++)
      alice.send({ type: "direct_message", to: "bob", content: `m${i}` });
    for (let i = 1; i <= 15; i++) await alice.next("message_ack");
    const { replayed, synced } = await syncFrom(b, "bob", 2);
    expect(synced).toEqual({ type: "synced", position: 15, trimmed: { from: 3, to: 5 } });
    expect(replayed.map((f) => f["position"])).toEqual([6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
  });

  it("moves a client that is ahead of the server's inbox back, so it skips nothing new", async () => {
    const [a] = await service();
    const { synced, client } = await syncFrom(a, "bob", 500);
    expect(synced).toEqual({ type: "synced", position: 0 });
    const alice = await a.connect("alice");
    alice.send({ type: "direct_message", to: "bob", content: "after the reset" });
    expect((await client.next("direct_message"))["position"]).toBe(1);
  });

  it.each(["since=-1", "since=1.5", "since=abc", "presence=maybe"])(
    "refuses a malformed %s during the upgrade with 400",
    async (option) => {
      const [a] = await service();
      const token = await mintToken({ sub: "bob" });
      const refusal = await TestClient.connect(`${a.wsUrl}?token=${token}&${option}`).catch(
        (e: unknown) => e,
      );
      expect((refusal as UpgradeRefused).status).toBe(400);
    },
  );
});
