/**
 * What the contract cannot see of reliable delivery (B2) on Redis: retention by TTL (texts expire
 * in Redis, indexes drop them lazily), the TTLs and caps the keys get, the idempotency record's
 * lifetime, and byte-compatibility of the texts and receipt frames the scripts build.
 */
import { randomUUID } from "node:crypto";
import { type Engine, IDEMPOTENCY_TTL_MS } from "@mrezhen/engine";
import { appendInput, Recorder, takeAllQueued } from "@mrezhen/engine/contract";
import { encodeMessage, receiptFrame } from "@mrezhen/protocol";
import { eventually, redisForTests } from "@mrezhen/testkit";
import { afterAll, describe, expect, it } from "vitest";
import { createRedisEngine } from "../src/index.js";
import { freshPrefixEachTest, startEngine } from "./helpers.js";

const redis = await redisForTests();
afterAll(() => redis?.close());

const contentOf = (json: string) => (JSON.parse(json) as { content: string }).content;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** User ids that need JSON escaping, or are not ASCII, or look like key or payload syntax. */
const AWKWARD = 'q"uote\\back/slash\n\t\u0001\u001f\u007f é 😀 </script>|f|x:y';

describe.skipIf(!redis)("redis engine: reliable delivery", () => {
  const redisForTest = freshPrefixEachTest(redis);
  const { url } = redisForTest;

  const SHORT_TTL_MS = 300;

  /** Resolves once Redis has expired the texts of these messages. */
  async function expired(...messageIds: string[]): Promise<void> {
    await sleep(SHORT_TTL_MS);
    await eventually(async () => {
      for (const id of messageIds)
        expect(await redisForTest.raw.exists(`${redisForTest.keyPrefix}msg:${id}`)).toBe(0);
    }, 5000);
  }

  describe("retention", () => {
    it("expires message texts after messageTtlMs: reads skip them and the inbox says where it starts", async () => {
      const engine = await startEngine({
        url,
        keyPrefix: redisForTest.keyPrefix,
        retention: { messageTtlMs: SHORT_TTL_MS, maxEntries: 100 },
      });
      const first = await engine.messages.append(appendInput("alice", "bob", "m1"));
      const second = await engine.messages.append(appendInput("alice", "bob", "m2"));
      // The texts and every index written carry the TTL (-2: already gone; never -1, persistent).
      for (const key of [
        `msg:${first.messageId}`,
        "inbox-log:bob",
        "inbox-log:alice",
        "queue:bob",
        `conv-log:${"alice".length}:alicebob`,
      ]) {
        const ttl = await redisForTest.raw.pttl(`${redisForTest.keyPrefix}${key}`);
        expect(ttl, key).not.toBe(-1);
        expect(ttl, key).toBeLessThanOrEqual(SHORT_TTL_MS);
      }

      await expired(first.messageId, second.messageId);
      expect(await engine.messages.history("alice", "bob", 10)).toEqual({
        messages: [],
        hasMore: false,
      });
      // Both positions count as trimmed: the inbox starts after the newest.
      expect(await engine.messages.readInbox("bob", 0, 10)).toEqual({
        entries: [],
        oldest: 3,
        newest: 2,
      });
      expect(await takeAllQueued(engine.messages, "bob")).toEqual([]);
      expect(await engine.messages.conversations("bob", 10)).toEqual([]);

      // Counters outlive the texts: seq and positions go on (a node with the default TTL writes
      // this one, so that it cannot expire while the test reads it).
      const other = await startEngine({ url, keyPrefix: redisForTest.keyPrefix });
      const third = await other.messages.append(appendInput("alice", "bob", "m3"));
      expect(third).toMatchObject({ seq: 3, recipientPosition: 3 });
      const inbox = await other.messages.readInbox("bob", 0, 10);
      expect(inbox.entries.map((e) => [e.position, contentOf(e.messageJson)])).toEqual([[3, "m3"]]);
      expect(inbox).toMatchObject({ oldest: 3, newest: 3 });
    });

    it("drops index entries whose text expired, lazily, while newer ones stay", async () => {
      // Two nodes of one deployment with different TTLs: older texts expire, their indexes live on
      // (renewed by the long-TTL node), so the reads must skip and drop the dead entries themselves.
      const short = await startEngine({
        url,
        keyPrefix: redisForTest.keyPrefix,
        retention: { messageTtlMs: SHORT_TTL_MS, maxEntries: 100 },
      });
      const long = await startEngine({ url, keyPrefix: redisForTest.keyPrefix });
      const shortLived = [
        await short.messages.append(appendInput("alice", "bob", "m1")),
        await short.messages.append(appendInput("alice", "bob", "m2")),
        await short.messages.append(appendInput("carol", "bob", "only short")),
      ];
      await long.messages.append(appendInput("alice", "bob", "m3"));
      await long.messages.append(appendInput("bob", "alice", "m4"));
      await expired(...shortLived.map((r) => r.messageId));

      expect(await redisForTest.raw.llen(`${redisForTest.keyPrefix}inbox-log:bob`)).toBe(5);
      const page = await long.messages.history("bob", "alice", 1);
      expect(page.messages.map(contentOf)).toEqual(["m4"]);
      expect(page.hasMore).toBe(true);
      const older = await long.messages.history("bob", "alice", 10, 4);
      expect(older).toMatchObject({ hasMore: false });
      expect(older.messages.map(contentOf)).toEqual(["m3"]);

      const inbox = await long.messages.readInbox("bob", 0, 10);
      expect(inbox.entries.map((e) => [e.position, contentOf(e.messageJson)])).toEqual([
        [4, "m3"],
        [5, "m4"],
      ]);
      expect(inbox).toMatchObject({ oldest: 4, newest: 5 });
      // The dead entries left the indexes; the conversation with only expired messages left the list.
      expect(await redisForTest.raw.llen(`${redisForTest.keyPrefix}inbox-log:bob`)).toBe(2);
      const conversations = await long.messages.conversations("bob", 10);
      expect(conversations.map((c) => [c.with, contentOf(c.lastMessageJson), c.unread])).toEqual([
        ["alice", "m4", 3],
      ]);
      expect(
        await redisForTest.raw.zrange(`${redisForTest.keyPrefix}convs:bob`, "0", "-1"),
      ).toEqual(["alice"]);
      expect(
        (await takeAllQueued(long.messages, "bob")).map((q) => contentOf(q.messageJson)),
      ).toEqual(["m3"]);
      // Unread counts only kept messages after a recount: m3 is the one left from alice.
      await long.messages.markRead("bob", "alice", 1);
      expect((await long.messages.conversations("bob", 10))[0]?.unread).toBe(1);
    });

    it("refuses retention options that cannot work", async () => {
      await expect(
        createRedisEngine({
          url,
          keyPrefix: redisForTest.keyPrefix,
          nodeId: "n",
          rateLimit: { limit: 1, windowMs: 1000 },
          retention: { messageTtlMs: 0, maxEntries: 1.5 },
        }),
      ).rejects.toThrow(
        /retention\.messageTtlMs must be a positive integer \(got 0\); retention\.maxEntries must be a positive integer \(got 1\.5\)/,
      );
    });

    it("caps the offline queue and the conversation list at maxEntries", async () => {
      const engine = await startEngine({
        url,
        keyPrefix: redisForTest.keyPrefix,
        retention: { messageTtlMs: 60_000, maxEntries: 3 },
      });
      for (let i = 1; i <= 5; i++)
        await engine.messages.append(appendInput(`sender-${i}`, "bob", `m${i}`));
      expect((await takeAllQueued(engine.messages, "bob")).map((q) => q.position)).toEqual([
        3, 4, 5,
      ]);
      const list = await engine.messages.conversations("bob", 10);
      expect(list.map((c) => c.with)).toEqual(["sender-5", "sender-4", "sender-3"]);
      expect(await redisForTest.raw.hlen(`${redisForTest.keyPrefix}conv-last:bob`)).toBe(3);
      expect(await redisForTest.raw.llen(`${redisForTest.keyPrefix}inbox-log:bob`)).toBe(3);
    });

    it("keeps an idempotency record for at least 24 hours, and a retry changes nothing", async () => {
      const engine = await startEngine({ url, keyPrefix: redisForTest.keyPrefix });
      const sent = appendInput("alice", "bob", "once", { clientMsgId: "retry-me" });
      const first = await engine.messages.append(sent);
      const key = `${redisForTest.keyPrefix}idem:5:aliceretry-me`; // <len(from)>:<from><clientMsgId>
      const ttl = await redisForTest.raw.pttl(key);
      expect(ttl).toBeGreaterThan(24 * 60 * 60 * 1000);
      expect(ttl).toBeLessThanOrEqual(IDEMPOTENCY_TTL_MS);

      const keysBefore = (await redisForTest.raw.keys(`${redisForTest.keyPrefix}*`)).sort();
      const inboxBefore = await redisForTest.raw.lrange(
        `${redisForTest.keyPrefix}inbox-log:bob`,
        0,
        -1,
      );
      const retry = await engine.messages.append({ ...sent, id: randomUUID(), timestamp: "later" });
      expect(retry).toEqual({ ...first, duplicate: true });
      expect((await redisForTest.raw.keys(`${redisForTest.keyPrefix}*`)).sort()).toEqual(
        keysBefore,
      );
      expect(
        await redisForTest.raw.lrange(`${redisForTest.keyPrefix}inbox-log:bob`, 0, -1),
      ).toEqual(inboxBefore);
      expect(await redisForTest.raw.get(`${redisForTest.keyPrefix}inbox-pos:bob`)).toBe("1");
      // The record is not renewed by a retry.
      expect(await redisForTest.raw.pttl(key)).toBeLessThanOrEqual(ttl);
    });
  });

  describe("index logs", () => {
    it("reads logs whose positions have holes (another version took some) without misnumbering", async () => {
      // APPEND pushes every position it hands out, so a log has no holes; a node of an older
      // version (sorted-set indexes) appending during a rolling upgrade would leave some. Reads
      // then seek by binary search: made here by removing entries by hand.
      const engine = await startEngine({ url, keyPrefix: redisForTest.keyPrefix });
      const recorder = new Recorder();
      engine.broker.setHandler(recorder);
      await engine.broker.subscribe("alice");
      const sent: string[] = [];
      for (let i = 1; i <= 8; i++)
        sent.push((await engine.messages.append(appendInput("alice", "bob", `m${i}`))).messageId);
      const entry = (position: number) => `${position}|${sent[position - 1]}`;
      for (const position of [2, 4, 7])
        await redisForTest.raw.lrem(`${redisForTest.keyPrefix}inbox-log:bob`, 1, entry(position));
      for (const seq of [3, 5, 6])
        await redisForTest.raw.lrem(`${redisForTest.keyPrefix}conv-log:5:alicebob`, 1, entry(seq));

      const positions = async (after: number, limit: number) =>
        (await engine.messages.readInbox("bob", after, limit)).entries.map((e) => e.position);
      expect(await positions(0, 10)).toEqual([1, 3, 5, 6, 8]);
      expect(await positions(1, 10)).toEqual([3, 5, 6, 8]);
      expect(await positions(2, 10)).toEqual([3, 5, 6, 8]);
      expect(await positions(3, 1)).toEqual([5]);
      expect(await positions(4, 2)).toEqual([5, 6]);
      expect(await positions(6, 10)).toEqual([8]);
      expect(await positions(7, 10)).toEqual([8]);
      expect(await engine.messages.readInbox("bob", 8, 10)).toEqual({
        entries: [],
        oldest: 1,
        newest: 8,
      });

      const history = async (limit: number, before?: number) => {
        const page = await engine.messages.history("bob", "alice", limit, before);
        return [page.messages.map(contentOf), page.hasMore];
      };
      expect(await history(10)).toEqual([["m1", "m2", "m4", "m7", "m8"], false]);
      expect(await history(2)).toEqual([["m7", "m8"], true]);
      expect(await history(2, 7)).toEqual([["m2", "m4"], true]);
      expect(await history(2, 6)).toEqual([["m2", "m4"], true]);
      expect(await history(2, 4)).toEqual([["m1", "m2"], false]);
      expect(await history(10, 3)).toEqual([["m1", "m2"], false]);

      // Acks and read marks walk from the right entry: up to position 5, bob got seqs 1, 3 and 5.
      await engine.messages.acknowledge("bob", 5);
      await eventually(() =>
        expect(recorder.framesFor("alice")).toEqual([
          JSON.parse(receiptFrame("delivered", "bob", 5)),
        ]),
      );
      await engine.messages.markRead("bob", "alice", 4);
      expect((await engine.messages.conversations("bob", 1))[0]?.unread).toBe(2); // m7, m8
    });
  });

  describe("byte-compatibility with @mrezhen/protocol", () => {
    it("stores a message with a clientMsgId exactly as encodeMessage() writes it", async () => {
      const engine = await startEngine({ url, keyPrefix: redisForTest.keyPrefix });
      const clientMsgId = 'k"/\\é😀\u0000';
      const sent = appendInput(AWKWARD, "bob", 'x "y" \\z', { clientMsgId });
      const result = await engine.messages.append(sent);
      const expected = encodeMessage({
        id: sent.id,
        from: AWKWARD,
        to: "bob",
        content: sent.content,
        timestamp: sent.timestamp,
        clientMsgId,
        seq: 1,
      });
      expect((await engine.messages.history("bob", AWKWARD, 10)).messages).toEqual([expected]);
      expect((await engine.messages.readInbox(AWKWARD, 0, 10)).entries).toEqual([
        { messageId: sent.id, messageJson: expected, position: result.senderPosition },
      ]);
      // The retry is recognised by the same awkward key, with the original's id and timestamp.
      const retry = await engine.messages.append({ ...sent, id: randomUUID(), timestamp: "later" });
      expect(retry).toMatchObject({
        duplicate: true,
        messageId: sent.id,
        timestamp: sent.timestamp,
      });
    });

    it("builds receipt frames exactly as receiptFrame() writes them, to senders with any id", async () => {
      const engine = await startEngine({ url, keyPrefix: redisForTest.keyPrefix });
      const recorder = new Recorder();
      engine.broker.setHandler(recorder);
      await engine.broker.subscribe(AWKWARD);
      await engine.broker.subscribe("bob");
      // AWKWARD → bob: bob's ack sends AWKWARD a delivered receipt (its channel read from the text).
      await engine.messages.append(appendInput(AWKWARD, "bob", "1"));
      const second = await engine.messages.append(appendInput(AWKWARD, "bob", "2"));
      await engine.messages.acknowledge("bob", second.recipientPosition);
      // bob → AWKWARD, then AWKWARD reads and acks: receipts from an awkward id to bob.
      const third = await engine.messages.append(appendInput("bob", AWKWARD, "3"));
      await engine.messages.acknowledge(AWKWARD, third.recipientPosition);
      await engine.messages.markRead(AWKWARD, "bob", 3);
      await engine.messages.markRead("bob", AWKWARD, 2);

      const framesOf = (user: string) =>
        recorder.events.flatMap((e) =>
          e.userId === user && e.event.kind === "frame" ? [e.event.frame] : [],
        );
      await eventually(() => {
        expect(framesOf(AWKWARD)).toEqual([
          receiptFrame("delivered", "bob", 2),
          receiptFrame("read", "bob", 2),
        ]);
        expect(framesOf("bob")).toEqual([
          receiptFrame("delivered", AWKWARD, 3),
          receiptFrame("read", AWKWARD, 3),
        ]);
      });
      expect((await engine.messages.receipts(AWKWARD)).sort()).toEqual(
        [receiptFrame("delivered", "bob", 2), receiptFrame("read", "bob", 2)].sort(),
      );
      expect((await engine.messages.receipts("bob")).sort()).toEqual(
        [receiptFrame("delivered", AWKWARD, 3), receiptFrame("read", AWKWARD, 3)].sort(),
      );
      // Unread counts compare the sender as stored: bob read up to 2 of AWKWARD's 2 messages.
      const bobs = await engine.messages.conversations("bob", 10);
      expect(bobs.map((c) => [c.with, c.unread])).toEqual([[AWKWARD, 0]]);
    });

    it("finds the receipts of a sender whose id has a lone surrogate (as Node names its keys)", async () => {
      const engine = await startEngine({ url, keyPrefix: redisForTest.keyPrefix });
      const lone = "lone\ud800x";
      const sent = await engine.messages.append(appendInput(lone, "bob", "hi"));
      await engine.messages.acknowledge("bob", sent.recipientPosition);
      await engine.messages.markRead("bob", lone, 1);
      expect((await engine.messages.receipts(lone)).sort()).toEqual(
        [receiptFrame("delivered", "bob", 1), receiptFrame("read", "bob", 1)].sort(),
      );
      expect((await engine.messages.conversations("bob", 1))[0]).toMatchObject({
        with: "lone\ufffdx",
        unread: 0,
      });
    });

    it("routes ephemeral frames as they are, to other nodes too", async () => {
      const sender = await startEngine({ url, keyPrefix: redisForTest.keyPrefix });
      const holder: Engine = await startEngine({ url, keyPrefix: redisForTest.keyPrefix });
      const recorder = new Recorder();
      holder.broker.setHandler(recorder);
      await holder.broker.subscribe(AWKWARD);
      const frame = `{"type":"typing","from":${JSON.stringify(AWKWARD)},"state":"start"}`;
      await sender.broker.publishFrame(AWKWARD, frame);
      await eventually(() =>
        expect(recorder.events).toEqual([{ userId: AWKWARD, event: { kind: "frame", frame } }]),
      );
    });
  });
});
