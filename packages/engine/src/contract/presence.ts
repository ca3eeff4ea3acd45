import { afterEach, describe, expect, it } from "vitest";
import {
  type BackendFactory,
  type ContractBackend,
  eventually,
  QUIET_MS,
  Recorder,
  sleep,
} from "./harness.js";

const RATE = { limit: 1000, windowMs: 60_000 };

export function presenceContract(factory: BackendFactory): void {
  describe("PresenceStore", () => {
    let backend: ContractBackend;
    afterEach(async () => backend?.close());

    it("announces a user's first connection and last disconnection, once each", async () => {
      backend = await factory({ rateLimit: RATE });
      const engine = await backend.node();
      const recorder = new Recorder();
      engine.broker.setHandler(recorder);

      await engine.presence.connect("alice");
      await engine.presence.connect("alice");
      await eventually(() => expect(recorder.presence()).toHaveLength(1));
      expect(recorder.presence()[0]).toEqual({
        userId: "alice",
        status: "online",
        onlineUsers: ["alice"],
      });
      expect(await engine.presence.onlineUsers()).toEqual(["alice"]);

      await engine.presence.disconnect("alice");
      await sleep(QUIET_MS);
      expect(recorder.presence()).toHaveLength(1);
      expect(await engine.presence.onlineUsers()).toEqual(["alice"]);

      await engine.presence.disconnect("alice");
      await eventually(() => expect(recorder.presence()).toHaveLength(2));
      expect(recorder.presence()[1]).toEqual({
        userId: "alice",
        status: "offline",
        onlineUsers: [],
      });
      expect(await engine.presence.onlineUsers()).toEqual([]);
    });

    it("lists every online user in each announcement", async () => {
      backend = await factory({ rateLimit: RATE });
      const engine = await backend.node();
      const recorder = new Recorder();
      engine.broker.setHandler(recorder);
      await engine.presence.connect("alice");
      await engine.presence.connect("bob");
      await eventually(() => expect(recorder.presence()).toHaveLength(2));
      expect(recorder.presence()[1]?.onlineUsers).toEqual(["alice", "bob"]);
      expect((await engine.presence.onlineUsers()).sort()).toEqual(["alice", "bob"]);
    });

    it("keeps a view that is, at every change, the set that change hands out", async () => {
      backend = await factory({ rateLimit: RATE });
      const engine = await backend.node();
      const seen: { userId: string; status: string; inView: boolean; same: boolean }[] = [];
      engine.broker.setHandler({
        onUserEvent() {},
        onPresence(change) {
          seen.push({
            userId: change.userId,
            status: change.status,
            inView: engine.presence.view.has(change.userId),
            same: [...engine.presence.view].sort().join() === [...change.online].sort().join(),
          });
        },
      });
      await engine.presence.connect("alice");
      await engine.presence.connect("bob");
      await engine.presence.disconnect("alice");
      await eventually(() => expect(seen).toHaveLength(3));
      expect(seen).toEqual([
        { userId: "alice", status: "online", inView: true, same: true },
        { userId: "bob", status: "online", inView: true, same: true },
        { userId: "alice", status: "offline", inView: false, same: true },
      ]);
      expect([...engine.presence.view]).toEqual(["bob"]);
    });

    it("ignores a disconnect of a user that is not connected", async () => {
      backend = await factory({ rateLimit: RATE });
      const engine = await backend.node();
      const recorder = new Recorder();
      engine.broker.setHandler(recorder);
      await engine.presence.disconnect("ghost");
      await sleep(QUIET_MS);
      expect(recorder.presence()).toEqual([]);
      expect(await engine.presence.onlineUsers()).toEqual([]);
    });

    it("keeps a user online until its last connection on any node closes, and tells every node", async ({
      skip,
    }) => {
      backend = await factory({ rateLimit: RATE });
      // One node cannot show cross-node behaviour: say so, rather than pass without asserting.
      if (backend.maxNodes < 2) skip();
      const nodeA = await backend.node();
      const nodeB = await backend.node();
      const recorderA = new Recorder();
      const recorderB = new Recorder();
      nodeA.broker.setHandler(recorderA);
      nodeB.broker.setHandler(recorderB);

      await nodeA.presence.connect("alice");
      await nodeB.presence.connect("alice");
      await eventually(() => expect(recorderB.presence()).toHaveLength(1));
      await nodeA.presence.disconnect("alice");
      await sleep(QUIET_MS);
      expect(await nodeB.presence.onlineUsers()).toEqual(["alice"]);
      await nodeB.presence.disconnect("alice");
      await eventually(() => {
        expect(recorderA.presence().map((p) => p.status)).toEqual(["online", "offline"]);
        expect(recorderB.presence().map((p) => p.status)).toEqual(["online", "offline"]);
      });
    });
  });
}
