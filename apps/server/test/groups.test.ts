/**
 * Groups end to end: real nodes, real WebSocket clients, on the memory engine, on two nodes
 * sharing a Redis and on two nodes on a Redis Cluster (members on different nodes, an offline
 * member resuming with `since` on the other node, a member with two devices on two nodes, a
 * removal racing messages).
 */
import { randomUUID } from "node:crypto";
import {
  type Frame,
  mintToken,
  redisClusterForTests,
  redisForTests,
  TestClient,
} from "@mrezhen/testkit";
import { afterAll, describe, expect, it, onTestFinished } from "vitest";
import { startNode, type TestNode } from "./helpers.js";

const redis = await redisForTests();
const redisCluster = await redisClusterForTests();
afterAll(() => Promise.all([redis?.close(), redisCluster?.close()]));

const backends: [string, () => Promise<[TestNode, TestNode]>][] = [
  [
    "memory engine",
    async () => {
      const node = await startNode({ RATE_LIMIT_MESSAGES: "100000" });
      return [node, node];
    },
  ],
];
if (redis !== undefined) {
  backends.push([
    "redis engine, two nodes",
    async () => {
      const shared = {
        REDIS_URL: redis.url,
        REDIS_KEY_PREFIX: `${redis.prefix}${randomUUID().slice(0, 6)}:`,
        RATE_LIMIT_MESSAGES: "100000",
      };
      return [
        await startNode({ ...shared, NODE_ID: "a" }),
        await startNode({ ...shared, NODE_ID: "b" }),
      ];
    },
  ]);
}

if (redisCluster !== undefined) {
  backends.push([
    "redis cluster engine, two nodes",
    async () => {
      const shared = {
        REDIS_CLUSTER_NODES: redisCluster.seeds,
        REDIS_KEY_PREFIX: `${redisCluster.prefix}${randomUUID().slice(0, 6)}:`,
        RATE_LIMIT_MESSAGES: "100000",
      };
      return [
        await startNode({ ...shared, NODE_ID: "a" }),
        await startNode({ ...shared, NODE_ID: "b" }),
      ];
    },
  ]);
}

interface Entry {
  id: string;
  seq: number;
  from: string;
  content?: string;
  event?: { kind: string; userId?: string };
}
const entryOf = (frame: Frame) => frame["message"] as Entry;
const label = (entry: Entry) =>
  entry.event === undefined
    ? (entry.content as string)
    : `${entry.event.kind}${entry.event.userId === undefined ? "" : `:${entry.event.userId}`}`;

async function connectSince(node: TestNode, userId: string, since: number) {
  const token = await mintToken({ sub: userId });
  const client = await TestClient.connect(`${node.wsUrl}?token=${token}&since=${since}`);
  onTestFinished(() => void client.close());
  const synced = await client.next("synced", 10_000);
  return { client, replayed: client.drain("group_message"), synced };
}

describe.each(backends)("groups (%s)", (_name, service) => {
  it("creates a group, delivers messages and membership events to every device on every node, replays them with since", async () => {
    const [a, b] = await service();
    const alice = await a.connect("alice");
    const bobA = await a.connect("bob", { query: "&since=0" });
    const bobB = await b.connect("bob", { query: "&since=0" });
    alice.send({ type: "create_group", name: "team", members: ["bob", "carol"] });
    const created = (await alice.next("group"))["group"] as { groupId: string; members: string[] };
    expect(created.members).toEqual(["alice", "bob", "carol"]);
    const { groupId } = created;
    for (const bob of [bobA, bobB]) {
      expect(((await bob.next("group"))["group"] as { groupId: string }).groupId).toBe(groupId);
      expect(label(entryOf(await bob.next("group_message")))).toBe("created");
    }

    alice.send({ type: "group_message", groupId, content: "hello", clientMsgId: "g-1" });
    const ack = await alice.next("message_ack");
    expect(ack).toMatchObject({ groupId, seq: 2, status: "delivered", clientMsgId: "g-1" });
    for (const bob of [bobA, bobB]) {
      const frame = await bob.next("group_message");
      expect(frame).toMatchObject({ groupId, position: expect.any(Number) });
      expect(entryOf(frame)).toMatchObject({ seq: 2, from: "alice", content: "hello" });
    }
    // A retry is answered with the same ack and stores nothing.
    alice.send({ type: "group_message", groupId, content: "hello", clientMsgId: "g-1" });
    expect(await alice.next("message_ack")).toMatchObject({ messageId: ack["messageId"], seq: 2 });

    alice.send({ type: "add_member", groupId, userId: "dave" });
    await alice.next("group");
    alice.send({ type: "remove_member", groupId, userId: "carol" });
    await alice.next("group");
    bobB.send({ type: "group_message", groupId, content: "after" });
    await bobB.next("message_ack");

    // carol, offline throughout, syncs on the other node: up to her removal, in order.
    const carol = await connectSince(b, "carol", 0);
    expect(carol.replayed.map((f) => label(entryOf(f)))).toEqual([
      "created",
      "hello",
      "joined:dave",
      "removed:carol",
    ]);
    carol.client.send({ type: "group_message", groupId, content: "let me in" });
    expect(await carol.client.next("error")).toMatchObject({ code: "FORBIDDEN", groupId });
    // A refusal names its group, also for a command that has no answer of its own.
    carol.client.send({ type: "mark_read", groupId, upTo: 2 });
    expect(await carol.client.next("error")).toMatchObject({ code: "FORBIDDEN", groupId });
    carol.client.send({ type: "get_history", groupId });
    const history = await carol.client.next("message_history");
    expect((history["messages"] as Entry[]).map(label).at(-1)).toBe("removed:carol");

    // dave syncs from 0: from his join on.
    const dave = await connectSince(a, "dave", 0);
    expect(dave.replayed.map((f) => label(entryOf(f)))).toEqual([
      "joined:dave",
      "removed:carol",
      "after",
    ]);
    // Groups sit in the conversation list with unread counts.
    dave.client.send({ type: "get_conversations" });
    const conversations = await dave.client.next("conversations");
    expect(conversations["items"]).toEqual([
      expect.objectContaining({ groupId, name: "team", unread: 1 }),
    ]);
    dave.client.send({ type: "get_groups" });
    expect(((await dave.client.next("groups"))["groups"] as unknown[]).length).toBe(1);
    dave.client.send({ type: "group_message", groupId: "no-such-group", content: "x" });
    expect(await dave.client.next("error")).toMatchObject({
      code: "NOT_FOUND",
      groupId: "no-such-group",
    });
  });

  it("orders messages racing a removal: the removed member gets exactly those before it", async () => {
    const [a, b] = await service();
    const admin = await a.connect("admin");
    const carol = await b.connect("carol");
    admin.send({ type: "create_group", name: "race", members: ["bob", "carol"] });
    const { groupId } = (await admin.next("group"))["group"] as { groupId: string };
    await carol.next("group");
    for (let i = 0; i < 20; i++) carol.send({ type: "group_message", groupId, content: `m${i}` });
    admin.send({ type: "remove_member", groupId, userId: "bob" });
    await admin.next("group");
    for (let i = 0; i < 20; i++) await carol.next("message_ack");
    admin.send({ type: "get_history", groupId, limit: 100 });
    const log = ((await admin.next("message_history"))["messages"] as Entry[]).map(label);
    const bob = await connectSince(b, "bob", 0);
    expect(bob.replayed.map((f) => label(entryOf(f)))).toEqual(
      log.slice(0, log.indexOf("removed:bob") + 1),
    );
  });
});
