/**
 * group_presence end to end: real nodes and clients, on the memory engine, on two nodes sharing
 * a Redis and on two nodes on a Redis Cluster. Members of a group with a `presence=contacts`
 * connection are told when another member comes online or goes offline: once per connection and
 * change however many groups they share, a snapshot at connect, and membership changes followed
 * (a removed member hears nothing more, a member added while online is announced, the added
 * member gets the group's online members).
 */
import { randomUUID } from "node:crypto";
import {
  eventually,
  type Frame,
  redisClusterForTests,
  redisForTests,
  type TestClient,
} from "@mrezhen/testkit";
import { afterAll, describe, expect, it } from "vitest";
import { startNode, type TestNode } from "./helpers.js";

const redis = await redisForTests();
const redisCluster = await redisClusterForTests();
afterAll(() => Promise.all([redis?.close(), redisCluster?.close()]));

// Coalescing off: every change is announced at once, so the tests can count frames exactly.
const env = { RATE_LIMIT_MESSAGES: "100000", PRESENCE_COALESCE_MS: "0" };
const backends: [string, () => Promise<[TestNode, TestNode]>][] = [
  [
    "memory engine",
    async () => {
      const node = await startNode(env);
      return [node, node];
    },
  ],
];
/** Two nodes sharing a Redis (`store`: its settings), each test under a key prefix of its own. */
function twoNodes(store: Record<string, string>, prefix: string) {
  return async (): Promise<[TestNode, TestNode]> => {
    const shared = { ...env, ...store, REDIS_KEY_PREFIX: `${prefix}${randomUUID().slice(0, 6)}:` };
    return [
      await startNode({ ...shared, NODE_ID: "a" }),
      await startNode({ ...shared, NODE_ID: "b" }),
    ];
  };
}
if (redis !== undefined) {
  backends.push(["redis engine, two nodes", twoNodes({ REDIS_URL: redis.url }, redis.prefix)]);
}
if (redisCluster !== undefined) {
  backends.push([
    "redis cluster engine, two nodes",
    twoNodes({ REDIS_CLUSTER_NODES: redisCluster.seeds }, redisCluster.prefix),
  ]);
}

const CONTACTS = { query: "&presence=contacts" };

/** The group_presence frames `client` received about `userId`, as "groupId status". */
function about(client: TestClient, userId: string): Frame[] {
  return client.received.filter(
    (frame) => frame.type === "group_presence" && frame["userId"] === userId,
  );
}

/** The next group_presence about `userId` (those about others before it are taken and skipped). */
async function nextAbout(client: TestClient, userId: string): Promise<Frame> {
  for (;;) {
    const frame = await client.next("group_presence");
    if (frame["userId"] === userId) return frame;
  }
}

async function createGroup(creator: TestClient, members: string[]): Promise<string> {
  creator.send({ type: "create_group", name: "g", members });
  return ((await creator.next("group"))["group"] as { groupId: string }).groupId;
}

describe.each(backends)("group_presence (%s)", (_name, service) => {
  it("tells each listening connection once per change, whatever the number of shared groups; only presence=contacts", async () => {
    const [a, b] = await service();
    const alice = await a.connect("alice", CONTACTS);
    const bob = await b.connect("bob", CONTACTS);
    const olga = await a.connect("olga"); // presence=on: the full frames, no group_presence
    const oscar = await b.connect("oscar", { query: "&presence=off" });
    const groupIds: string[] = [];
    for (let i = 0; i < 3; i++)
      groupIds.push(await createGroup(alice, ["bob", "dave", "olga", "oscar"]));
    // Bob (a listener) learns of each group, and its online members, as the group is created.
    for (let i = 0; i < 3; i++) await bob.next("group_message");
    await eventually(() => expect(about(bob, "alice").length).toBeGreaterThan(0));

    const dave = await b.connect("dave", { query: "&presence=off" });
    for (const listener of [alice, bob]) {
      const frame = await nextAbout(listener, "dave");
      expect(frame).toMatchObject({ userId: "dave", status: "online" });
      expect(groupIds).toContain(frame["groupId"]);
    }
    await dave.close();
    for (const listener of [alice, bob])
      expect(await nextAbout(listener, "dave")).toMatchObject({
        userId: "dave",
        status: "offline",
      });
    // Three shared groups, two changes: two frames each, not six.
    for (const listener of [alice, bob])
      expect(about(listener, "dave").map((frame) => frame["status"])).toEqual([
        "online",
        "offline",
      ]);
    expect(olga.received.filter((frame) => frame.type === "group_presence")).toEqual([]);
    expect(oscar.received.filter((frame) => frame.type === "group_presence")).toEqual([]);
    // Nobody is told of their own changes.
    expect(about(alice, "alice")).toEqual([]);

    // A new listening connection gets each online co-member once, dave (offline) not at all.
    const bobAgain = await a.connect("bob", CONTACTS);
    const snapshot = bobAgain.drain("group_presence");
    expect(snapshot.map((frame) => frame["userId"]).sort()).toEqual(["alice", "olga", "oscar"]);
    for (const frame of snapshot) {
      expect(frame["status"]).toBe("online");
      expect(groupIds).toContain(frame["groupId"]);
    }
  });

  it("follows membership: a removed member hears nothing more, an added one is announced and gets the online members", async () => {
    const [a, b] = await service();
    const alice = await a.connect("alice", CONTACTS);
    let bob = await a.connect("bob", CONTACTS);
    const carol = await b.connect("carol", CONTACTS);
    const groupId = await createGroup(alice, ["bob", "carol"]);
    await carol.next("group_message"); // created
    await eventually(() => expect(about(carol, "bob")).toHaveLength(1));

    alice.send({ type: "remove_member", groupId, userId: "carol" });
    await alice.next("group");
    expect((await carol.next("group_message"))["message"]).toMatchObject({
      event: { kind: "removed", userId: "carol" },
    });
    alice.drain("group_presence"); // the group's online members, told as it was created
    await bob.close();
    expect(await nextAbout(alice, "bob")).toMatchObject({
      groupId,
      userId: "bob",
      status: "offline",
    });
    bob = await b.connect("bob", CONTACTS);
    expect(await nextAbout(alice, "bob")).toMatchObject({ userId: "bob", status: "online" });
    // Carol, removed, shares no group with bob any more: none of his changes reach her.
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(about(carol, "bob")).toHaveLength(1);

    // Frank, online, is added: the listeners learn he is online.
    const frank = await b.connect("frank", { query: "&presence=off" });
    alice.send({ type: "add_member", groupId, userId: "frank" });
    await alice.next("group");
    for (const listener of [alice, bob])
      expect(await nextAbout(listener, "frank")).toMatchObject({
        groupId,
        userId: "frank",
        status: "online",
      });
    // Carol comes back: she gets the group's online members (on the Redis run, from a node
    // where nobody watches the group any more, which reads it).
    const seen = carol.received.length;
    alice.send({ type: "add_member", groupId, userId: "carol" });
    await alice.next("group");
    const told = () =>
      carol.received
        .slice(seen)
        .filter((frame) => frame.type === "group_presence")
        .map((frame) => [frame["userId"], frame["status"]]);
    await eventually(() =>
      expect(told().sort()).toEqual([
        ["alice", "online"],
        ["bob", "online"],
        ["frank", "online"],
      ]),
    );
    await frank.close();
    await eventually(() => {
      for (const listener of [alice, bob, carol])
        expect(about(listener, "frank").at(-1)).toMatchObject({ groupId, status: "offline" });
    });
  });
});

describe("group_presence coalescing (memory engine)", () => {
  it("merges a flapping member's changes like every presence change: at most two frames a window, the last one true", async () => {
    const node = await startNode({ PRESENCE_COALESCE_MS: "1000" });
    const alice = await node.connect("alice", CONTACTS);
    await createGroup(alice, ["dave"]);
    for (let i = 0; i < 3; i++) {
      const dave = await node.connect("dave", { query: "&presence=off" });
      await dave.close();
    }
    // The first change at once; the others merged into one at the window's end (offline).
    await eventually(() => expect(about(alice, "dave").at(-1)?.["status"]).toBe("offline"), 3000);
    await new Promise((resolve) => setTimeout(resolve, 1500));
    expect(about(alice, "dave").map((frame) => frame["status"])).toEqual(["online", "offline"]);
  });
});
