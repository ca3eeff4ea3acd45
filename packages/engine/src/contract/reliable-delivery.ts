import { afterEach, describe, expect, it } from "vitest";
import type { Engine } from "../ports.js";
import {
  appendInput,
  type BackendFactory,
  type ContractBackend,
  eventually,
  QUIET_MS,
  Recorder,
  sleep,
  takeAllQueued,
} from "./harness.js";

const RATE = { limit: 100_000, windowMs: 60_000 };

const contentOf = (json: string) => (JSON.parse(json) as { content: string }).content;

/** The B2 part of the MessageStore contract: idempotency, inboxes, receipts, pages, retention. */
export function reliableDeliveryContract(factory: BackendFactory): void {
  describe("MessageStore: reliable delivery", () => {
    let backend: ContractBackend;
    afterEach(async () => backend?.close());

    async function setup(retention?: { messageTtlMs: number; maxEntries: number }) {
      backend = await factory(
        retention === undefined ? { rateLimit: RATE } : { rateLimit: RATE, retention },
      );
      const engine = await backend.node();
      const recorder = new Recorder();
      engine.broker.setHandler(recorder);
      return { engine, recorder };
    }

    it("stores a clientMsgId once and answers a retry with the original result", async () => {
      const { engine } = await setup();
      const first = await engine.messages.append(
        appendInput("alice", "bob", "once", { clientMsgId: "key-1" }),
      );
      const retry = await engine.messages.append(
        appendInput("alice", "bob", "once", { clientMsgId: "key-1" }),
      );
      expect(first.duplicate).toBe(false);
      expect(retry).toEqual({ ...first, duplicate: true });
      // Another sender may use the same key.
      expect(
        (
          await engine.messages.append(
            appendInput("carol", "bob", "mine", { clientMsgId: "key-1" }),
          )
        ).duplicate,
      ).toBe(false);

      const history = await engine.messages.history("alice", "bob", 10);
      expect(history.messages.map(contentOf)).toEqual(["once"]);
      expect(JSON.parse(history.messages[0] ?? "")).toMatchObject({
        id: first.messageId,
        clientMsgId: "key-1",
      });
      const queued = await takeAllQueued(engine.messages, "bob");
      expect(queued.map((q) => q.messageId)).toEqual([first.messageId, expect.any(String)]);
    });

    it("stores exactly one of concurrent sends with the same clientMsgId, from any node", async () => {
      const { engine } = await setup();
      const nodes: Engine[] = [engine];
      if (backend.maxNodes > 1) nodes.push(await backend.node());
      const results = await Promise.all(
        Array.from({ length: 8 }, (_, i) =>
          (nodes[i % nodes.length] as Engine).messages.append(
            appendInput("alice", "bob", "race", { clientMsgId: "same" }),
          ),
        ),
      );
      expect(results.filter((r) => !r.duplicate)).toHaveLength(1);
      expect(new Set(results.map((r) => r.messageId)).size).toBe(1);
      expect((await engine.messages.history("alice", "bob", 10)).messages).toHaveLength(1);
    });

    it("pages history backwards with before and hasMore", async () => {
      const { engine } = await setup();
      for (let i = 1; i <= 7; i++)
        await engine.messages.append(appendInput("alice", "bob", `m${i}`));
      const newest = await engine.messages.history("alice", "bob", 3);
      expect(newest.messages.map(contentOf)).toEqual(["m5", "m6", "m7"]);
      expect(newest.hasMore).toBe(true);
      const older = await engine.messages.history("bob", "alice", 3, 5);
      expect(older.messages.map(contentOf)).toEqual(["m2", "m3", "m4"]);
      expect(older.hasMore).toBe(true);
      const oldest = await engine.messages.history("alice", "bob", 3, 2);
      expect(oldest).toEqual({ messages: [expect.any(String)], hasMore: false });
      expect(contentOf(oldest.messages[0] ?? "")).toBe("m1");
    });

    it("reads a user's inbox (sent and received) after a position, in order, in pages", async () => {
      const { engine } = await setup();
      await engine.messages.append(appendInput("alice", "bob", "a1"));
      await engine.messages.append(appendInput("bob", "alice", "b1"));
      await engine.messages.append(appendInput("carol", "alice", "c1"));
      const all = await engine.messages.readInbox("alice", 0, 10);
      expect(all.entries.map((e) => [e.position, contentOf(e.messageJson)])).toEqual([
        [1, "a1"],
        [2, "b1"],
        [3, "c1"],
      ]);
      expect(all).toMatchObject({ oldest: 1, newest: 3 });
      const page = await engine.messages.readInbox("alice", 1, 1);
      expect(page.entries.map((e) => e.position)).toEqual([2]);
      expect(await engine.messages.readInbox("nobody", 0, 10)).toEqual({
        entries: [],
        oldest: 1,
        newest: 0,
      });
    });

    it("sends the sender a delivered receipt once per advance of the recipient's acks", async () => {
      const { engine, recorder } = await setup();
      await engine.broker.subscribe("alice");
      const first = await engine.messages.append(appendInput("alice", "bob", "1"));
      const second = await engine.messages.append(appendInput("alice", "bob", "2"));
      await engine.messages.append(appendInput("carol", "bob", "from carol"));

      await engine.messages.acknowledge("bob", first.recipientPosition);
      await eventually(() =>
        expect(recorder.framesFor("alice")).toEqual([
          { type: "receipt", kind: "delivered", from: "bob", upTo: 1 },
        ]),
      );
      await engine.messages.acknowledge("bob", first.recipientPosition); // no advance
      await engine.messages.acknowledge("bob", second.recipientPosition + 1);
      await eventually(() => expect(recorder.framesFor("alice")).toHaveLength(2));
      expect(recorder.framesFor("alice")[1]).toEqual({
        type: "receipt",
        kind: "delivered",
        from: "bob",
        upTo: 2,
      });
      await sleep(QUIET_MS);
      expect(recorder.framesFor("alice")).toHaveLength(2);
      // The latest one waits for alice's next sync; carol's is there too.
      expect((await engine.messages.receipts("alice")).map((f) => JSON.parse(f))).toEqual([
        { type: "receipt", kind: "delivered", from: "bob", upTo: 2 },
      ]);
      expect((await engine.messages.receipts("carol")).map((f) => JSON.parse(f))).toEqual([
        { type: "receipt", kind: "delivered", from: "bob", upTo: 1 },
      ]);
    });

    it("sends read receipts, keeps unread counts and never lowers the read watermark", async () => {
      const { engine, recorder } = await setup();
      await engine.broker.subscribe("alice");
      for (let i = 1; i <= 4; i++)
        await engine.messages.append(appendInput("alice", "bob", `m${i}`));
      await engine.messages.append(appendInput("bob", "alice", "reply")); // seq 5, bob's own

      const unread = async () => (await engine.messages.conversations("bob", 10))[0]?.unread;
      expect(await unread()).toBe(4);
      await engine.messages.markRead("bob", "alice", 2);
      expect(await unread()).toBe(2);
      await engine.messages.markRead("bob", "alice", 1); // lower: ignored
      await engine.messages.markRead("bob", "alice", 99); // capped at the last seq
      expect(await unread()).toBe(0);
      await eventually(() =>
        expect(recorder.framesFor("alice")).toEqual([
          { type: "receipt", kind: "read", from: "bob", upTo: 2 },
          { type: "receipt", kind: "read", from: "bob", upTo: 5 },
        ]),
      );
      expect((await engine.messages.receipts("alice")).map((f) => JSON.parse(f))).toEqual([
        { type: "receipt", kind: "read", from: "bob", upTo: 5 },
      ]);
    });

    it("lists a user's contacts most recent first, ids only, at most the limit", async () => {
      const { engine } = await setup();
      await engine.messages.append(appendInput("alice", "bob", "1"));
      await engine.messages.append(appendInput("carol", "alice", "2"));
      await engine.messages.append(appendInput("alice", "dave", "3"));
      await engine.messages.append(appendInput("bob", "alice", "4"));
      await engine.messages.append(appendInput("erin", "frank", "not alice's"));
      expect(await engine.messages.contacts("alice", 10)).toEqual(["bob", "dave", "carol"]);
      expect(await engine.messages.contacts("alice", 2)).toEqual(["bob", "dave"]);
      expect(await engine.messages.contacts("carol", 10)).toEqual(["alice"]);
      expect(await engine.messages.contacts("nobody", 10)).toEqual([]);
      expect(await engine.messages.contacts("alice", 0)).toEqual([]);
    });

    it("lists conversations most recent first, with the last message and unread count", async () => {
      const { engine } = await setup();
      await engine.messages.append(appendInput("bob", "alice", "old"));
      await engine.messages.append(appendInput("carol", "alice", "newer"));
      await engine.messages.append(appendInput("carol", "alice", "newest"));
      await engine.messages.append(appendInput("alice", "dave", "sent by alice"));
      const list = await engine.messages.conversations("alice", 10);
      expect(list.map((c) => [c.with, contentOf(c.lastMessageJson), c.unread])).toEqual([
        ["dave", "sent by alice", 0],
        ["carol", "newest", 2],
        ["bob", "old", 1],
      ]);
      expect(await engine.messages.conversations("alice", 2)).toHaveLength(2);
      expect(await engine.messages.conversations("nobody", 5)).toEqual([]);
    });

    it("routes ephemeral frames to subscribed nodes only, storing nothing", async () => {
      const { engine, recorder } = await setup();
      await engine.broker.subscribe("bob");
      await engine.broker.publishFrame("bob", '{"type":"typing","from":"alice","state":"start"}');
      await engine.broker.publishFrame(
        "nobody",
        '{"type":"typing","from":"alice","state":"start"}',
      );
      await eventually(() =>
        expect(recorder.framesFor("bob")).toEqual([
          { type: "typing", from: "alice", state: "start" },
        ]),
      );
      await sleep(QUIET_MS);
      expect(recorder.framesFor("nobody")).toEqual([]);
      expect((await engine.messages.readInbox("bob", 0, 10)).entries).toEqual([]);
    });

    it("keeps at most maxEntries per inbox and conversation, and says where the inbox now starts", async () => {
      const { engine } = await setup({ messageTtlMs: 60_000, maxEntries: 5 });
      for (let i = 1; i <= 8; i++)
        await engine.messages.append(appendInput("alice", "bob", `m${i}`));
      const inbox = await engine.messages.readInbox("bob", 0, 100);
      expect(inbox.oldest).toBe(4);
      expect(inbox.newest).toBe(8);
      expect(inbox.entries.map((e) => contentOf(e.messageJson))).toEqual([
        "m4",
        "m5",
        "m6",
        "m7",
        "m8",
      ]);
      const history = await engine.messages.history("alice", "bob", 100);
      expect(history.messages.map(contentOf)).toEqual(["m4", "m5", "m6", "m7", "m8"]);
    });
  });
}
