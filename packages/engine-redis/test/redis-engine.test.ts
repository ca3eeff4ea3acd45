/**
 * What the contract cannot see: byte-compatibility of what the scripts build, per-node liveness
 * (a crashed node's users go offline; a restarted node leaves no ghosts), start and close.
 * Outages are in outage.test.ts.
 */
import { randomUUID } from "node:crypto";
import type { Engine } from "@mrezhen/engine";
import { Recorder } from "@mrezhen/engine/contract";
import { encodeMessage, presenceFrame } from "@mrezhen/protocol";
import { eventually, freePort, redisForTests } from "@mrezhen/testkit";
import { afterAll, describe, expect, it } from "vitest";
import { createRedisEngine, haltRedisEngineForTests } from "../src/index.js";
import { freshPrefixEachTest, goOnline, RATE, since, startEngine } from "./helpers.js";

const redis = await redisForTests();
afterAll(() => redis?.close());

describe.skipIf(!redis)("redis engine", () => {
  const redisForTest = freshPrefixEachTest(redis);
  const { url } = redisForTest;

  /** Resolves just after the node owning `aliveKey` refreshed it (its TTL went up). */
  async function nextHeartbeat(aliveKey: string, timeoutMs: number): Promise<void> {
    let previous = await redisForTest.raw.pttl(aliveKey);
    await eventually(
      async () => {
        const current = await redisForTest.raw.pttl(aliveKey);
        const refreshed = current > previous;
        previous = current;
        if (!refreshed) throw new Error(`no heartbeat on ${aliveKey} yet`);
      },
      timeoutMs,
      5,
    );
  }

  /** Short liveness timings, so a crash is noticed in about a second. */
  const FAST = { heartbeatIntervalMs: 100, nodeTtlMs: 600 };

  describe("byte-compatibility with @mrezhen/protocol", () => {
    it("announces presence as O(1) deltas, whatever the user ids, and builds frames as presenceFrame()", async () => {
      const engine = await startEngine({ url, keyPrefix: redisForTest.keyPrefix });
      const frames: string[] = [];
      const recorder = new Recorder();
      engine.broker.setHandler({
        onUserEvent: () => {},
        onPresence: (change) => {
          recorder.onPresence(change);
          // What a node sends its clients, built from the live view during the call.
          frames.push(presenceFrame(change.userId, change.status, [...change.online]));
        },
      });
      // What goes over the wire: the delta, never the list.
      const listener = redisForTest.raw.duplicate();
      listener.on("error", () => {});
      const payloads: string[] = [];
      listener.on("message", (_channel: string, payload: string) => payloads.push(payload));
      await listener.subscribe(`${redisForTest.keyPrefix}broadcast`);
      try {
        const awkward = 'q"uote\\back/slash\n\t\u0001\u001f\u007f é 😀 </script>|off|x';
        await engine.presence.connect("plain");
        await engine.presence.connect(awkward);
        await engine.presence.disconnect("plain");
        await eventually(() => expect(recorder.presence()).toHaveLength(3));
        expect(recorder.presence()).toEqual([
          { userId: "plain", status: "online", onlineUsers: ["plain"] },
          { userId: awkward, status: "online", onlineUsers: [awkward, "plain"].sort() },
          { userId: "plain", status: "offline", onlineUsers: [awkward] },
        ]);
        expect(frames[0]).toBe(presenceFrame("plain", "online", ["plain"]));
        expect(frames[2]).toBe(presenceFrame("plain", "offline", [awkward]));
        await eventually(() =>
          expect(payloads).toEqual(["p|1|on|plain", `p|2|on|${awkward}`, "p|3|off|plain"]),
        );
        expect(await redisForTest.raw.get(`${redisForTest.keyPrefix}presence:version`)).toBe("3");
        expect(await engine.presence.onlineUsers()).toEqual([awkward]);
      } finally {
        listener.disconnect();
      }
    });

    it("stores and publishes message texts exactly as encodeMessage() writes them", async () => {
      const engine = await startEngine({ url, keyPrefix: redisForTest.keyPrefix });
      const recorder = new Recorder();
      engine.broker.setHandler(recorder);
      await goOnline(engine, "bob");
      const content = 'a/b "c" \\d \n\u0000 \u2028 😀 \ud800 lone surrogate';
      const id = randomUUID();
      const timestamp = "2026-11-26T03:00:00.000Z";
      const result = await engine.messages.append({
        id,
        from: "alice|x",
        to: "bob",
        content,
        timestamp,
        senderConnId: "c1",
      });
      const expected = encodeMessage({
        id,
        from: "alice|x",
        to: "bob",
        content,
        timestamp,
        seq: 1,
      });
      expect(await engine.messages.history("bob", "alice|x", 10)).toEqual({
        messages: [expected],
        hasMore: false,
      });
      await eventually(() =>
        expect(recorder.eventsFor("bob")).toEqual([
          {
            kind: "message",
            messageId: id,
            messageJson: expected,
            position: result.recipientPosition,
          },
        ]),
      );
    });
  });

  describe("per-node liveness", () => {
    it("shows a crashed node's users offline once its liveness key expires", async () => {
      const observer = await startEngine({ url, keyPrefix: redisForTest.keyPrefix, ...FAST });
      const recorder = new Recorder();
      observer.broker.setHandler(recorder);
      const doomed = await startEngine({ url, keyPrefix: redisForTest.keyPrefix, ...FAST });
      await observer.presence.connect("alice");
      await doomed.presence.connect("bob");
      await doomed.presence.connect("bob");
      await doomed.presence.connect("alice"); // Also on the observer's node: stays online.
      await eventually(() => expect(recorder.presence()).toHaveLength(2));

      const crashed = Date.now();
      haltRedisEngineForTests(doomed);
      await eventually(() => expect(recorder.presence()).toHaveLength(3), 5000);
      const elapsed = since(crashed);
      expect(recorder.presence()[2]).toEqual({
        userId: "bob",
        status: "offline",
        onlineUsers: ["alice"],
      });
      expect(await observer.presence.onlineUsers()).toEqual(["alice"]);
      expect(await redisForTest.raw.hgetall(`${redisForTest.keyPrefix}presence:count`)).toEqual({
        alice: "1",
      });
      expect(await redisForTest.raw.smembers(`${redisForTest.keyPrefix}nodes`)).toHaveLength(1);
      console.log(
        `[liveness] crashed node swept after ${elapsed} ms (heartbeat ${FAST.heartbeatIntervalMs} ms, ttl ${FAST.nodeTtlMs} ms)`,
      );
    });

    it("with the default timings, shows a crashed node's users offline within 15 s", async () => {
      const observer = await startEngine({ url, keyPrefix: redisForTest.keyPrefix });
      const recorder = new Recorder();
      observer.broker.setHandler(recorder);
      const nodeId = `doomed-${randomUUID().slice(0, 8)}`;
      const doomed = await startEngine({ url, keyPrefix: redisForTest.keyPrefix, nodeId });
      await doomed.presence.connect("bob");
      await eventually(() => expect(recorder.presence()).toHaveLength(1));
      // Crash just after a heartbeat, the worst moment: the key then lives a whole ttl.
      await nextHeartbeat(`${redisForTest.keyPrefix}node-alive:${nodeId}`, 5000);

      const crashed = Date.now();
      haltRedisEngineForTests(doomed);
      await eventually(() => expect(recorder.presence()).toHaveLength(2), 15_000, 50);
      const elapsed = since(crashed);
      expect(recorder.presence()[1]).toMatchObject({
        userId: "bob",
        status: "offline",
        onlineUsers: [],
      });
      expect(elapsed).toBeLessThan(15_000);
      console.log(
        `[liveness] default timings (3 s heartbeat, 9 s ttl), crash right after a heartbeat: users offline after ${elapsed} ms`,
      );
    }, 30_000);

    it("a node restarted with the same NODE_ID clears what its previous run left, at once", async () => {
      const observer = await startEngine({ url, keyPrefix: redisForTest.keyPrefix });
      const recorder = new Recorder();
      observer.broker.setHandler(recorder);
      const nodeId = `fixed-${randomUUID().slice(0, 8)}`;
      const first = await startEngine({ url, keyPrefix: redisForTest.keyPrefix, nodeId });
      await first.presence.connect("alice");
      await first.presence.connect("bob");
      await eventually(() => expect(recorder.presence()).toHaveLength(2));
      haltRedisEngineForTests(first);

      const restarted = Date.now();
      const second = await startEngine({ url, keyPrefix: redisForTest.keyPrefix, nodeId });
      // Well before the old liveness key (9 s) could have expired.
      await eventually(() => expect(recorder.presence()).toHaveLength(4), 2000);
      expect(since(restarted)).toBeLessThan(2000);
      expect(
        recorder
          .presence()
          .slice(2)
          .map((p) => [p.userId, p.status]),
      ).toEqual(
        expect.arrayContaining([
          ["alice", "offline"],
          ["bob", "offline"],
        ]),
      );
      expect(recorder.presence()[3]?.onlineUsers).toEqual([]);
      expect(await second.presence.onlineUsers()).toEqual([]);
      expect(
        await redisForTest.raw.exists(`${redisForTest.keyPrefix}presence:node:${nodeId}`),
      ).toBe(0);
      expect(await redisForTest.raw.hlen(`${redisForTest.keyPrefix}presence:count`)).toBe(0);
      expect(
        (await redisForTest.raw.smembers(`${redisForTest.keyPrefix}nodes`)).sort(),
      ).toHaveLength(2);

      await second.presence.connect("alice");
      expect(await second.presence.onlineUsers()).toEqual(["alice"]);
    });

    it("a node swept while alive (missed heartbeats) re-asserts its users by itself", async () => {
      const observer = await startEngine({ url, keyPrefix: redisForTest.keyPrefix, ...FAST });
      const recorder = new Recorder();
      observer.broker.setHandler(recorder);
      const nodeId = `slow-${randomUUID().slice(0, 8)}`;
      // A slower heartbeat than the observer's, so the observer certainly sweeps it first.
      const slow = await startEngine({
        url,
        keyPrefix: redisForTest.keyPrefix,
        nodeId,
        heartbeatIntervalMs: 1000,
        nodeTtlMs: 5000,
      });
      await slow.presence.connect("alice");
      await slow.presence.connect("alice");
      await eventually(() => expect(recorder.presence()).toHaveLength(1));

      // As if its heartbeats had stalled past the ttl: the observer sweeps it (within 100 ms)...
      // Delete the key just after a heartbeat of the slow node, so its next one is 1 s away.
      const aliveKey = `${redisForTest.keyPrefix}node-alive:${nodeId}`;
      await nextHeartbeat(aliveKey, 3000);
      await redisForTest.raw.del(aliveKey);
      // ...then its next heartbeat notices and puts alice back, with both connections.
      await eventually(
        () =>
          expect(recorder.presence().map((p) => p.status)).toEqual(["online", "offline", "online"]),
        5000,
      );
      await eventually(async () =>
        expect(
          await redisForTest.raw.hgetall(`${redisForTest.keyPrefix}presence:node:${nodeId}`),
        ).toEqual({ alice: "2" }),
      );
      expect(await redisForTest.raw.hgetall(`${redisForTest.keyPrefix}presence:count`)).toEqual({
        alice: "2",
      });
      await slow.presence.disconnect("alice");
      await slow.presence.disconnect("alice");
      await eventually(() => expect(recorder.presence()).toHaveLength(4));
      expect(recorder.presence()[3]).toMatchObject({ status: "offline", onlineUsers: [] });
    });
  });

  describe("across nodes", () => {
    it("shows every node the same queue, in order, until one removes what it delivered", async () => {
      const nodes = [
        await startEngine({ url, keyPrefix: redisForTest.keyPrefix }),
        await startEngine({ url, keyPrefix: redisForTest.keyPrefix }),
        await startEngine({ url, keyPrefix: redisForTest.keyPrefix }),
      ];
      const ids: string[] = [];
      for (let i = 0; i < 30; i++) {
        const id = randomUUID();
        ids.push(id);
        await (nodes[i % 3] as Engine).messages.append({
          id,
          from: `sender-${i % 4}`,
          to: "bob",
          content: `m${i}`,
          timestamp: new Date().toISOString(),
          senderConnId: "c",
        });
      }
      const reads = await Promise.all(nodes.map((node) => node.messages.readQueued("bob", 0, 100)));
      for (const read of reads) {
        expect(read.map((q) => q.messageId)).toEqual(ids);
        expect(read.map((q) => q.position)).toEqual(ids.map((_, i) => i + 1));
      }
      await (nodes[1] as Engine).messages.removeQueued("bob", 10);
      const rest = await (nodes[2] as Engine).messages.readQueued("bob", 0, 100);
      expect(rest.map((q) => q.messageId)).toEqual(ids.slice(10));
    });

    it("says how long until the oldest action leaves the window", async () => {
      const engine = await startEngine({
        url,
        keyPrefix: redisForTest.keyPrefix,
        rateLimit: { limit: 2, windowMs: 1000 },
      });
      const before = Date.now();
      expect(await engine.rateLimiter.consume("alice")).toEqual({ allowed: true, retryAfterMs: 0 });
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect((await engine.rateLimiter.consume("alice")).allowed).toBe(true);
      const refused = await engine.rateLimiter.consume("alice");
      const elapsed = Date.now() - before;
      expect(refused.allowed).toBe(false);
      // 1000 ms minus the first action's age (≥ 300 ms): the oldest action decides.
      expect(refused.retryAfterMs).toBeGreaterThanOrEqual(1000 - elapsed - 2);
      expect(refused.retryAfterMs).toBeLessThanOrEqual(702);
      // Only the allowed actions are recorded, and the key expires with the window.
      expect(await redisForTest.raw.llen(`${redisForTest.keyPrefix}rate-log:alice`)).toBe(2);
      expect(
        await redisForTest.raw.pttl(`${redisForTest.keyPrefix}rate-log:alice`),
      ).toBeLessThanOrEqual(1000);
    });

    it("keeps a window's list to the actions that can still count", async () => {
      const key = `${redisForTest.keyPrefix}rate-log:alice`;
      // A small limit: only the last `limit` actions are kept.
      const small = await startEngine({
        url,
        keyPrefix: redisForTest.keyPrefix,
        rateLimit: { limit: 3, windowMs: 60_000 },
      });
      for (let i = 0; i < 10; i++) await small.rateLimiter.consume("alice");
      expect(await redisForTest.raw.llen(key)).toBe(3);
      await redisForTest.raw.del(key);
      // A large one: actions out of the window leave the list (checked every 64 pushes).
      const large = await startEngine({
        url,
        keyPrefix: redisForTest.keyPrefix,
        rateLimit: { limit: 1_000_000, windowMs: 1000 },
      });
      for (let i = 0; i < 100; i++)
        expect((await large.rateLimiter.consume("alice")).allowed).toBe(true);
      expect(await redisForTest.raw.llen(key)).toBe(100);
      await new Promise((resolve) => setTimeout(resolve, 1100));
      for (let i = 0; i < 28; i++)
        expect((await large.rateLimiter.consume("alice")).allowed).toBe(true);
      expect(await redisForTest.raw.llen(key)).toBe(28); // At 128 entries, the 100 old ones went.
    });
  });

  describe("start and close", () => {
    it("rejects at once with a clear error when Redis is unreachable", async () => {
      const port = await freePort(); // Nothing listens there.
      const started = Date.now();
      await expect(
        createRedisEngine({
          url: `redis://:secret@127.0.0.1:${port}`,
          keyPrefix: redisForTest.keyPrefix,
          nodeId: "n",
          rateLimit: RATE,
        }),
      ).rejects.toThrow(
        expect.objectContaining({
          name: "EngineUnavailableError",
          message: expect.stringMatching(
            /cannot reach Redis at redis:\/\/:\*\*\*@127\.0\.0\.1:\d+\/? \(connect ECONNREFUSED/,
          ),
        }),
      );
      expect(since(started)).toBeLessThan(2000);
    });

    it("refuses options that cannot work, saying how to fix them", async () => {
      await expect(
        createRedisEngine({
          url,
          keyPrefix: redisForTest.keyPrefix,
          nodeId: "n",
          rateLimit: RATE,
          heartbeatIntervalMs: 1000,
          nodeTtlMs: 500,
        }),
      ).rejects.toThrow(/nodeTtlMs \(500\) must be an integer above heartbeatIntervalMs/);
    });

    it("is healthy once started; close() takes its users offline at once and is idempotent", async () => {
      const observer = await startEngine({ url, keyPrefix: redisForTest.keyPrefix });
      const recorder = new Recorder();
      observer.broker.setHandler(recorder);
      const nodeId = `closing-${randomUUID().slice(0, 8)}`;
      const engine = await createRedisEngine({
        url,
        keyPrefix: redisForTest.keyPrefix,
        nodeId,
        rateLimit: RATE,
      });
      expect(engine.health()).toEqual({ ok: true });
      await goOnline(engine, "bob");
      await eventually(() => expect(recorder.presence()).toHaveLength(1));

      await Promise.all([engine.close(), engine.close()]);
      await engine.close();
      expect(engine.health()).toEqual({ ok: false, reason: "engine closed" });
      await eventually(() => expect(recorder.presence()).toHaveLength(2), 1000);
      expect(recorder.presence()[1]).toMatchObject({ userId: "bob", status: "offline" });
      expect(await redisForTest.raw.sismember(`${redisForTest.keyPrefix}nodes`, nodeId)).toBe(0);
      expect(await redisForTest.raw.exists(`${redisForTest.keyPrefix}node-alive:${nodeId}`)).toBe(
        0,
      );
      await expect(engine.messages.history("a", "b", 1)).rejects.toThrow(
        expect.objectContaining({ name: "EngineUnavailableError" }),
      );
    });
  });
});
