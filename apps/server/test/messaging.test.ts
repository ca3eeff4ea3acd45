import type { Frame } from "@mrezhen/testkit";
import { describe, expect, it } from "vitest";
import { startNode } from "./helpers.js";

const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
type Message = {
  id: string;
  from: string;
  content: string;
  timestamp: string;
  seq: number;
  to: string;
};
const messageOf = (frame: Frame) => frame["message"] as Message;

describe("direct messages", () => {
  it("delivers live and acks 'delivered' after storing; the sender is the token's subject", async () => {
    const { connect } = await startNode();
    const bob = await connect("bob");
    const alice = await connect("alice");
    alice.send({ type: "direct_message", to: "bob", content: "hi bob", from: "mallory" });

    const received = await bob.next("direct_message");
    const ack = await alice.next("message_ack");
    const message = messageOf(received);
    expect(message).toMatchObject({ from: "alice", to: "bob", content: "hi bob", seq: 1 });
    expect(message.timestamp).toMatch(ISO_UTC);
    expect(received["queued"]).toBeUndefined();
    expect(ack).toMatchObject({
      type: "message_ack",
      messageId: message.id,
      to: "bob",
      status: "delivered",
    });
    expect(ack["timestamp"]).toBe(message.timestamp);
    // The sender does not get its own message back on the sending connection.
    await alice.expectNone("direct_message");
  });

  it("reaches every open connection of the recipient", async () => {
    const { connect } = await startNode();
    const bobPhone = await connect("bob");
    const bobLaptop = await connect("bob");
    const alice = await connect("alice");
    alice.send({ type: "direct_message", to: "bob", content: "both?" });
    const [onPhone, onLaptop] = await Promise.all([
      bobPhone.next("direct_message"),
      bobLaptop.next("direct_message"),
    ]);
    expect(messageOf(onPhone).id).toBe(messageOf(onLaptop).id);
    expect((await alice.next("message_ack"))["status"]).toBe("delivered");
  });

  it("queues for an offline user and delivers the queue once, in send order, on connect", async () => {
    const { connect } = await startNode();
    const alice = await connect("alice");
    for (const content of ["one", "two", "three"]) {
      alice.send({ type: "direct_message", to: "bob", content });
      expect((await alice.next("message_ack"))["status"]).toBe("queued");
    }
    const bob = await connect("bob");
    const delivered = [
      await bob.next("direct_message"),
      await bob.next("direct_message"),
      await bob.next("direct_message"),
    ];
    expect(delivered.map((f) => messageOf(f).content)).toEqual(["one", "two", "three"]);
    expect(delivered.every((f) => f["queued"] === true)).toBe(true);
    await bob.close();

    const bobAgain = await connect("bob");
    await bobAgain.expectNone("direct_message", 300);
  });

  it("delivers a message sent while the recipient connects after the queued ones, never before", async () => {
    const { connect } = await startNode();
    const alice = await connect("alice");
    for (let i = 0; i < 20; i++)
      alice.send({ type: "direct_message", to: "bob", content: `queued ${i}` });
    for (let i = 0; i < 20; i++) await alice.next("message_ack");
    const connecting = connect("bob");
    alice.send({ type: "direct_message", to: "bob", content: "live" });
    const bob = await connecting;
    const contents: string[] = [];
    for (let i = 0; i < 21; i++) contents.push(messageOf(await bob.next("direct_message")).content);
    expect(contents.slice(0, 20)).toEqual(Array.from({ length: 20 }, (_, i) => `queued ${i}`));
    expect(contents[20]).toBe("live");
  });
});

describe("presence", () => {
  it("announces a user's first connection and last disconnection to everyone, once", async () => {
    const { connect } = await startNode();
    const bob = await connect("bob");
    expect(await bob.next("presence")).toMatchObject({
      userId: "bob",
      status: "online",
      onlineUsers: ["bob"],
    });

    const aliceTab1 = await connect("alice");
    const online = await bob.next("presence");
    expect(online).toMatchObject({ type: "presence", userId: "alice", status: "online" });
    expect((online["onlineUsers"] as string[]).sort()).toEqual(["alice", "bob"]);

    const aliceTab2 = await connect("alice");
    await aliceTab2.close();
    await bob.expectNone("presence", 300);

    await aliceTab1.close();
    expect(await bob.next("presence")).toMatchObject({
      userId: "alice",
      status: "offline",
      onlineUsers: ["bob"],
    });
  });

  it("sends no presence frames to a connection that opted out, and still answers get_online_users", async () => {
    const { connect } = await startNode();
    const quiet = await connect("carol", { query: "&presence=off" });
    const listener = await connect("bob");
    await connect("alice");
    expect((await listener.next("presence"))["userId"]).toBe("bob");
    expect((await listener.next("presence"))["userId"]).toBe("alice");
    await quiet.expectNone("presence", 200);
    quiet.send({ type: "get_online_users" });
    expect(((await quiet.next("online_users"))["users"] as string[]).sort()).toEqual([
      "alice",
      "bob",
      "carol",
    ]);
  });

  it("lists online users on request, one entry per user", async () => {
    const { connect } = await startNode();
    const alice = await connect("alice");
    await connect("alice");
    await connect("bob");
    alice.send({ type: "get_online_users" });
    const list = await alice.next("online_users");
    expect((list["users"] as string[]).sort()).toEqual(["alice", "bob"]);
  });
});

describe("history", () => {
  it("returns the newest messages oldest first, to both parties and no one else", async () => {
    const { connect } = await startNode({ RATE_LIMIT_MESSAGES: "1000" });
    const alice = await connect("alice");
    const bob = await connect("bob");
    const carol = await connect("carol");
    for (let i = 1; i <= 6; i++) {
      const [from, to] = i % 2 ? [alice, "bob"] : [bob, "alice"];
      from.send({ type: "direct_message", to, content: `m${i}` });
      await from.next("message_ack");
    }
    carol.send({ type: "direct_message", to: "alice", content: "carol to alice" });
    await carol.next("message_ack");

    alice.send({ type: "get_history", with: "bob", limit: 4 });
    const page = await alice.next("message_history");
    expect(page["with"]).toBe("bob");
    expect((page["messages"] as Message[]).map((m) => m.content)).toEqual(["m3", "m4", "m5", "m6"]);

    bob.send({ type: "get_history", with: "alice" });
    const full = (await bob.next("message_history"))["messages"] as Message[];
    expect(full.map((m) => m.content)).toEqual(["m1", "m2", "m3", "m4", "m5", "m6"]);
    expect(Object.keys(full[0] ?? {})).toEqual(
      expect.arrayContaining(["id", "from", "content", "timestamp"]),
    );

    // Carol sees only her own conversation with alice, never alice and bob's.
    carol.send({ type: "get_history", with: "bob" });
    expect((await carol.next("message_history"))["messages"]).toEqual([]);
    carol.send({ type: "get_history", with: "alice" });
    expect(
      ((await carol.next("message_history"))["messages"] as Message[]).map((m) => m.content),
    ).toEqual(["carol to alice"]);
  });

  it("clamps limit to 1..100 and defaults it to 50", async () => {
    const { connect } = await startNode({ RATE_LIMIT_MESSAGES: "1000" });
    const alice = await connect("alice");
    for (let i = 0; i < 105; i++)
      alice.send({ type: "direct_message", to: "bob", content: `m${i}` });
    for (let i = 0; i < 105; i++) await alice.next("message_ack");
    const count = async (limit: unknown) => {
      alice.send(
        limit === undefined
          ? { type: "get_history", with: "bob" }
          : { type: "get_history", with: "bob", limit },
      );
      return ((await alice.next("message_history"))["messages"] as Message[]).length;
    };
    expect(await count(undefined)).toBe(50);
    expect(await count(0)).toBe(1);
    expect(await count(-5)).toBe(1);
    expect(await count(1000)).toBe(100);
    expect(await count(7.9)).toBe(7);
  });
});

describe("rate limit", () => {
  it("passes exactly N messages per window; N+1 is refused, not stored and not delivered", async () => {
    const { connect } = await startNode({
      RATE_LIMIT_MESSAGES: "3",
      RATE_LIMIT_WINDOW_MS: "60000",
    });
    const bob = await connect("bob");
    const alice = await connect("alice");
    for (let i = 1; i <= 3; i++) {
      alice.send({ type: "direct_message", to: "bob", content: `ok ${i}` });
      expect((await alice.next("message_ack"))["status"]).toBe("delivered");
    }
    alice.send({ type: "direct_message", to: "bob", content: "one too many" });
    const refused = await alice.next("error");
    expect(refused["code"]).toBe("RATE_LIMITED");
    expect(refused["message"]).toMatch(/retry in \d+ ms/);

    for (let i = 0; i < 3; i++) await bob.next("direct_message");
    await bob.expectNone("direct_message", 300);
    bob.send({ type: "get_history", with: "alice" });
    expect(
      ((await bob.next("message_history"))["messages"] as Message[]).map((m) => m.content),
    ).toEqual(["ok 1", "ok 2", "ok 3"]);
  });

  it("counts all of a user's connections together", async () => {
    const { connect } = await startNode({ RATE_LIMIT_MESSAGES: "2" });
    const tab1 = await connect("alice");
    const tab2 = await connect("alice");
    tab1.send({ type: "direct_message", to: "bob", content: "1" });
    await tab1.next("message_ack");
    tab2.send({ type: "direct_message", to: "bob", content: "2" });
    await tab2.next("message_ack");
    tab1.send({ type: "direct_message", to: "bob", content: "3" });
    expect((await tab1.next("error"))["code"]).toBe("RATE_LIMITED");
  });
});

describe("ping", () => {
  it("answers with a pong carrying an ISO 8601 UTC timestamp", async () => {
    const { connect } = await startNode();
    const alice = await connect("alice");
    alice.send({ type: "ping" });
    const pong = await alice.next("pong");
    expect(pong["timestamp"]).toMatch(ISO_UTC);
    expect(Math.abs(Date.parse(pong["timestamp"] as string) - Date.now())).toBeLessThan(5000);
  });
});
