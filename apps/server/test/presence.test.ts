import type { Frame, TestClient } from "@mrezhen/testkit";
import { describe, expect, it } from "vitest";
import { startNode, type TestNode } from "./helpers.js";

/** Short windows keep the tests short; the logic is the same at the default 1 s. */
const WINDOW_MS = 300;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Presence frames about `userId` this client received so far. */
const about = (client: TestClient, userId: string): Frame[] =>
  client.received.filter((frame) => frame.type === "presence" && frame["userId"] === userId);

const presenceFrames = (client: TestClient): Frame[] =>
  client.received.filter((frame) => frame.type === "presence");

/** `userId` connects and disconnects `times` times; resolves how long it took, in ms. */
async function flap(node: TestNode, userId: string, times: number): Promise<number> {
  const started = performance.now();
  for (let i = 0; i < times; i++) await (await node.connect(userId)).close();
  return performance.now() - started;
}

/**
 * The most frames one listener may get about a user whose changes span `spanMs` (as the client
 * saw them): every announcement opens a window of at least WINDOW_MS in which nothing else is
 * announced, and the last may come at the end of the window running when the changes stop (up
 * to 1.25 windows later); one more for the slack between the client's clock and the node's.
 */
const bound = (spanMs: number) => 3 + Math.floor(spanMs / WINDOW_MS);

/** Gives `a` and `b` a conversation (a message from `a`, queued for `b`), then disconnects `a`. */
async function converse(node: TestNode, a: string, b: string): Promise<void> {
  const client = await node.connect(a);
  client.send({ type: "direct_message", to: b, content: "hello" });
  await client.next("message_ack");
  await client.close();
}

describe("presence floods are bounded", () => {
  it("gives each listener at most one frame per window about a flapping user, ending on its real state, without delaying registration", async () => {
    const node = await startNode({ PRESENCE_COALESCE_MS: String(WINDOW_MS) });
    const bob = await node.connect("bob");
    const spanMs = await flap(node, "alice", 20);
    const alice = await node.connect("alice");
    // Registration is never delayed by coalescing: alice is online for delivery right away,
    // though her last announced state may still be "offline".
    bob.send({ type: "direct_message", to: "alice", content: "are you back?" });
    expect(await bob.next("message_ack")).toMatchObject({ status: "delivered" });
    expect(await alice.next("direct_message")).toMatchObject({
      message: { content: "are you back?" },
    });
    await sleep(2 * WINDOW_MS);

    const frames = about(bob, "alice");
    expect(frames.length).toBeGreaterThanOrEqual(1);
    expect(frames.length).toBeLessThanOrEqual(bound(spanMs));
    expect(frames.at(-1)).toMatchObject({ status: "online" });
    expect([...((frames.at(-1)?.["onlineUsers"] as string[] | undefined) ?? [])].sort()).toEqual([
      "alice",
      "bob",
    ]);

    await alice.close();
    await sleep(2 * WINDOW_MS);
    expect(about(bob, "alice").at(-1)).toMatchObject({ status: "offline", onlineUsers: ["bob"] });
  });

  it("gives presence=contacts connections deltas without a list, for their contacts only", async () => {
    const node = await startNode({ PRESENCE_COALESCE_MS: String(WINDOW_MS) });
    await converse(node, "alice", "carol");
    await converse(node, "frank", "alice");
    await sleep(2 * WINDOW_MS);
    const carol = await node.connect("carol", { query: "&presence=contacts" });
    const dave = await node.connect("dave", { query: "&presence=contacts" }); // a stranger
    await node.connect("erin"); // a stranger in the default mode, whose changes carol never sees

    const alice = await node.connect("alice");
    expect(await carol.next("presence")).toEqual({
      type: "presence",
      userId: "alice",
      status: "online",
    });
    // A contact who connects while alice is online learns it at once, as a delta.
    const frank = await node.connect("frank", { query: "&presence=contacts" });
    expect(about(frank, "alice")).toEqual([
      { type: "presence", userId: "alice", status: "online" },
    ]);

    await alice.close();
    expect(await carol.next("presence")).toEqual({
      type: "presence",
      userId: "alice",
      status: "offline",
    });
    await sleep(2 * WINDOW_MS);
    expect(presenceFrames(carol).map((frame) => frame["userId"])).toEqual(["alice", "alice"]);
    expect(presenceFrames(dave)).toEqual([]);
    expect(presenceFrames(frank).map((frame) => frame["status"])).toEqual(["online", "offline"]);
  });

  it("answers get_online_users about the users asked, and refuses a malformed list", async () => {
    const node = await startNode();
    const bob = await node.connect("bob", { query: "&presence=contacts" });
    await node.connect("alice");
    bob.send({ type: "get_online_users", users: ["alice", "nobody", "alice", "bob"] });
    expect(await bob.next("online_users")).toEqual({
      type: "online_users",
      users: ["alice", "bob"],
    });
    bob.send({ type: "get_online_users" });
    expect(((await bob.next("online_users"))["users"] as string[]).sort()).toEqual([
      "alice",
      "bob",
    ]);
    const tooMany = Array.from({ length: 101 }, (_, i) => `u${i}`);
    for (const users of [[], tooMany, "alice", [5], [""], ["x".repeat(129)]]) {
      bob.send({ type: "get_online_users", users });
      expect(await bob.next("error")).toMatchObject({ code: "INVALID_FORMAT" });
    }
  });

  it("keeps the frames of a flap independent of the number of users online (load, bounded)", async () => {
    const figures: { online: number; perFullListener: number; contactFrames: number }[] = [];
    for (const strangers of [20, 100]) {
      const node = await startNode({ PRESENCE_COALESCE_MS: String(WINDOW_MS) });
      await converse(node, "alice", "carol");
      await converse(node, "dave", "alice");
      const contacts = [
        await node.connect("carol", { query: "&presence=contacts" }),
        await node.connect("dave", { query: "&presence=contacts" }),
      ];
      const full: TestClient[] = [];
      const quiet: TestClient[] = [];
      for (let i = 0; i < strangers; i++) {
        full.push(await node.connect(`full${i}`));
        quiet.push(await node.connect(`stranger${i}`, { query: "&presence=contacts" }));
      }
      await sleep(2 * WINDOW_MS);
      const before = (client: TestClient) => about(client, "alice").length;
      const fullBefore = full.map(before);

      const spanMs = await flap(node, "alice", 20);
      await sleep(2 * WINDOW_MS);

      const perFull = full.map((client, i) => about(client, "alice").length - (fullBefore[i] ?? 0));
      for (const count of perFull) expect(count).toBeLessThanOrEqual(bound(spanMs));
      for (const client of full) expect(about(client, "alice").at(-1)?.["status"]).toBe("offline");
      // presence=contacts: only the two contacts hear of alice, whoever else is online.
      for (const client of quiet) expect(presenceFrames(client)).toEqual([]);
      const contactFrames = contacts.reduce(
        (sum, client) => sum + about(client, "alice").length,
        0,
      );
      expect(contactFrames).toBeLessThanOrEqual(contacts.length * bound(spanMs));
      for (const client of contacts) {
        expect(about(client, "alice").at(-1)).toEqual({
          type: "presence",
          userId: "alice",
          status: "offline",
        });
      }
      figures.push({
        online: 2 + 2 * strangers,
        perFullListener: Math.max(...perFull),
        contactFrames,
      });
      await node.node.close();
    }
    // Nearly five times the users online, and the same bounds held: frames per listener depend
    // on the flap's duration and the window only (and, for contacts, on the contacts).
    const [small, large] = figures as [(typeof figures)[0], (typeof figures)[0]];
    expect(large.online).toBeGreaterThan(4 * small.online);
  }, 30_000);

  it("sends a user's coming online to its 5 contacts only, with 2,000 other users online (scale, bounded)", async () => {
    // The scale goal is 10,000 online users and 5 contacts → 5 frames, not 10,000; 2,000 keeps
    // this test to a few seconds, and a broadcast would show at any size.
    const ONLINE = 2000;
    const node = await startNode({ PRESENCE_COALESCE_MS: String(WINDOW_MS) });
    const contactIds = ["c0", "c1", "c2", "c3", "c4"];
    for (const contact of contactIds) await converse(node, "alice", contact);
    await sleep(2 * WINDOW_MS);
    const contacts = await Promise.all(
      contactIds.map((id) => node.connect(id, { query: "&presence=contacts" })),
    );
    const others: TestClient[] = [];
    for (let i = 0; i < ONLINE; i += 200) {
      const batch = Array.from({ length: Math.min(200, ONLINE - i) }, (_, j) =>
        node.connect(`online${i + j}`, { query: "&presence=contacts" }),
      );
      others.push(...(await Promise.all(batch)));
    }
    await sleep(2 * WINDOW_MS);
    const framesBefore = [...contacts, ...others].map((client) => client.received.length);

    await node.connect("alice", { query: "&presence=contacts" });
    for (const client of contacts) {
      expect(await client.next("presence")).toEqual({
        type: "presence",
        userId: "alice",
        status: "online",
      });
    }
    await sleep(2 * WINDOW_MS);
    const framesAfter = [...contacts, ...others].map(
      (client, i) => client.received.length - (framesBefore[i] ?? 0),
    );
    // One frame at each contact, none anywhere else: 5 frames in all, whoever else is online.
    expect(framesAfter.slice(0, contacts.length)).toEqual([1, 1, 1, 1, 1]);
    expect(framesAfter.reduce((sum, count) => sum + count, 0)).toBe(contacts.length);
  }, 30_000);
});
