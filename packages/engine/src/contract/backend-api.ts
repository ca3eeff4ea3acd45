import { afterEach, describe, expect, it } from "vitest";
import type { Engine } from "../ports.js";
import {
  type BackendFactory,
  type ContractBackend,
  eventually,
  Recorder,
  sleep,
} from "./harness.js";

const RATE = { limit: 1000, windowMs: 60_000 };

/** The ports the server API and the webhooks use: counts, control events, revocations, events. */
export function backendApiContract(factory: BackendFactory): void {
  describe("server API ports", () => {
    let backend: ContractBackend;
    afterEach(async () => backend?.close());

    it("counts each user's connections over all nodes, in the order asked", async () => {
      backend = await factory({ rateLimit: RATE });
      const a = await backend.node();
      const b = await backend.node();
      await a.presence.connect("alice");
      await b.presence.connect("alice");
      await a.presence.connect("bob");
      expect(await a.presence.connectionCounts(["bob", "alice", "carol"])).toEqual(
        a === b ? [1, 2, 0] : [1, 2, 0],
      );
      await b.presence.disconnect("alice");
      expect(await b.presence.connectionCounts(["alice"])).toEqual([1]);
      expect(await b.presence.connectionCounts([])).toEqual([]);
    });

    it("numbers presence changes with increasing versions", async () => {
      backend = await factory({ rateLimit: RATE });
      const engine = await backend.node();
      const versions: (number | undefined)[] = [];
      engine.broker.setHandler({
        onUserEvent() {},
        onPresence: (change) => versions.push(change.version),
      });
      await engine.presence.connect("alice");
      await engine.presence.disconnect("alice");
      await engine.presence.connect("bob");
      await eventually(() => expect(versions).toHaveLength(3));
      const [v1, v2, v3] = versions as number[];
      expect(v1).toBeGreaterThan(0);
      expect(v2).toBeGreaterThan(v1 as number);
      expect(v3).toBeGreaterThan(v2 as number);
    });

    it("routes a control event to the nodes that hold the user", async () => {
      backend = await factory({ rateLimit: RATE });
      const a = await backend.node();
      const b = await backend.node();
      const recorder = new Recorder();
      b.broker.setHandler(recorder);
      if (a !== b) a.broker.setHandler(new Recorder());
      await b.broker.subscribe("alice");
      await a.broker.publishControl("alice", {
        kind: "control",
        action: "disconnect",
        code: 4003,
        reason: "bye",
      });
      await eventually(() =>
        expect(recorder.events).toEqual([
          {
            userId: "alice",
            event: { kind: "control", action: "disconnect", code: 4003, reason: "bye" },
          },
        ]),
      );
    });

    it("keeps revocations on every node, never moving one back", async () => {
      backend = await factory({ rateLimit: RATE });
      const a = await backend.node();
      const b = await backend.node();
      expect(a.revocations.revokedBefore("alice")).toBeUndefined();
      await a.revocations.revoke("alice", 2_000_000);
      expect(a.revocations.revokedBefore("alice")).toBe(2_000_000);
      await eventually(() => expect(b.revocations.revokedBefore("alice")).toBe(2_000_000));
      await b.revocations.revoke("alice", 1_000_000);
      await sleep(50);
      expect(a.revocations.revokedBefore("alice")).toBe(2_000_000);
      expect(b.revocations.revokedBefore("alice")).toBe(2_000_000);
      expect(b.revocations.revokedBefore("bob")).toBeUndefined();
    });

    it("queues events until acknowledged, and counts them", async () => {
      backend = await factory({ rateLimit: RATE });
      const engine = await backend.node();
      await engine.events.publish('{"n":1}');
      await engine.events.publish('{"n":2}');
      const stats = await engine.events.stats();
      expect(stats.depth).toBe(2);
      const taken = await engine.events.take(10, 0, 60_000);
      expect(taken.map((event) => event.payload)).toEqual(['{"n":1}', '{"n":2}']);
      expect(taken.every((event) => !event.claimed && event.publishedAt > 0)).toBe(true);
      // Held by this worker: not handed out again before the claim timeout.
      expect(await engine.events.take(10, 0, 60_000)).toEqual([]);
      await engine.events.acknowledge(taken.map((event) => event.entryId));
      expect((await engine.events.stats()).depth).toBe(0);
    });

    it("hands a worker's unacknowledged events to another after the claim timeout", async () => {
      backend = await factory({ rateLimit: RATE });
      const a = await backend.node();
      const b = await backend.node();
      await a.events.publish('{"n":1}');
      const [first] = await a.events.take(10, 0, 200);
      expect(first?.payload).toBe('{"n":1}');
      // a renews its hold: b gets nothing yet.
      await sleep(120);
      await a.events.keep([first?.entryId as string]);
      await sleep(120);
      expect(await b.events.take(10, 0, 200)).toEqual([]);
      // a stops renewing (it died): b takes it over.
      await sleep(250);
      const again = await b.events.take(10, 0, 200);
      expect(again.map((event) => [event.payload, event.claimed])).toEqual([['{"n":1}', true]]);
      await b.events.acknowledge(again.map((event) => event.entryId));
      expect((await a.events.stats()).depth).toBe(0);
    });

    it("queues a presence event once per version, however many nodes publish it", async () => {
      backend = await factory({ rateLimit: RATE });
      const nodes: Engine[] = [await backend.node(), await backend.node()];
      for (const node of nodes) await node.events.publish('{"v":5}', 5);
      await (nodes[1] as Engine).events.publish('{"v":4}', 4);
      for (const node of nodes) await node.events.publish('{"v":6}', 6);
      const taken = await (nodes[0] as Engine).events.take(10, 0, 60_000);
      expect(taken.map((event) => event.payload)).toEqual(['{"v":5}', '{"v":6}']);
    });
  });
}
