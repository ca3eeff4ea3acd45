/**
 * Cross-node delivery of group entries on a standalone Redis: one PUBLISH per node that holds
 * members (on its node channel, naming them), none per member and none to a node holding no
 * member. Counted with INFO commandstats on a redis-server of its own (no other test's traffic).
 */
import { randomUUID } from "node:crypto";
import type { GroupAppendResult } from "@mrezhen/engine";
import { groupInput, Recorder } from "@mrezhen/engine/contract";
import { deletePrefix, eventually, ownRedisServer } from "@mrezhen/testkit";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { closeEngines, goOnline, rawClient, startEngine } from "./helpers.js";

const redis = await ownRedisServer();
afterAll(() => redis?.stop());

describe.skipIf(!redis)("redis engine: group fan-out per node", () => {
  const url = redis?.url ?? "";
  const keyPrefix = `fan-out:${randomUUID().slice(0, 8)}:`;
  const admin = rawClient(url);
  afterAll(() => admin.disconnect());
  afterEach(async () => {
    await closeEngines();
    await deletePrefix(url, keyPrefix);
  });

  async function publishes(): Promise<number> {
    const stats = String(await admin.info("commandstats"));
    return Number(/^cmdstat_publish:calls=(\d+)/m.exec(stats)?.[1] ?? 0);
  }

  /** Three nodes: A holds the sender (two connections) and half the members, B the other half, C none. */
  async function cluster(membersPerNode: number, othersOnline = 0) {
    // A long heartbeat keeps the liveness script (and its publishes) out of the count.
    const options = { url, keyPrefix, heartbeatIntervalMs: 60_000, nodeTtlMs: 180_000 };
    const nodes = await Promise.all([1, 2, 3].map(() => startEngine(options)));
    const recorders = nodes.map((engine) => {
      const recorder = new Recorder();
      engine.broker.setHandler(recorder);
      return recorder;
    });
    const [a, b, c] = nodes as [(typeof nodes)[0], (typeof nodes)[0], (typeof nodes)[0]];
    const onA = Array.from({ length: membersPerNode }, (_, i) => `a|${i} ✓`);
    const onB = Array.from({ length: membersPerNode }, (_, i) => `b ${i}`);
    await goOnline(a, "alice");
    await a.presence.connect("alice"); // a second device: it gets a copy of her messages
    for (const user of onA) await goOnline(a, user);
    for (const user of onB) await goOnline(b, user);
    await goOnline(c, "carol"); // on node C, in no group of hers
    // Users in no group, so that the presence hashes are large (no longer listpacks, which
    // the scripts read whole: hash_values in scripts.ts).
    await Promise.all(Array.from({ length: othersOnline }, (_, i) => b.presence.connect(`x${i}`)));
    const { group } = await a.groups.create({
      groupId: `team|${randomUUID().slice(0, 8)}`,
      name: "team",
      createdBy: "alice",
      members: [...onA, ...onB, "offline-olga"],
      eventId: randomUUID(),
      timestamp: new Date().toISOString(),
    });
    return { a, b, c, recorders, onA, onB, groupId: group.groupId };
  }

  it.each([
    [2, 0],
    [30, 0],
    [30, 600],
  ])(
    "publishes a message once per node holding members (%i members a node, %i others online)",
    async (membersPerNode, othersOnline) => {
      const { a, recorders, onA, onB, groupId } = await cluster(membersPerNode, othersOnline);
      const [recorderA, recorderB, recorderC] = recorders as [Recorder, Recorder, Recorder];
      // One member's inbox is a step ahead (a DM), so the members' positions differ.
      const [ahead, behind] = onB as [string, string];
      await a.messages.appendIfAllowed({
        id: randomUUID(),
        from: "carol",
        to: ahead,
        content: "dm",
        timestamp: new Date().toISOString(),
        senderConnId: "carol-conn",
      });
      const before = await publishes();
      const input = groupInput(groupId, "alice", "hello", { senderConnId: "alice-laptop" });
      const result = (await a.groups.append(input)) as GroupAppendResult;
      expect(result).toMatchObject({ status: "delivered" });
      expect((await publishes()) - before).toBe(2);

      const text = (events: readonly { messageJson: string }[]) =>
        events.map((e) => (JSON.parse(e.messageJson) as { content?: string }).content);
      await eventually(() => {
        for (const user of onA) expect(text(recorderA.eventsFor(user))).toContain("hello");
        for (const user of onB) expect(text(recorderB.eventsFor(user))).toContain("hello");
        // The sender's copy is for her other devices: the sending connection gets the ack.
        expect(recorderA.eventsFor("alice").at(-1)).toMatchObject({
          groupId,
          excludeConnId: "alice-laptop",
          position: result.senderPosition,
        });
      });
      for (const user of onB) expect(recorderA.eventsFor(user)).toEqual([]);
      for (const user of onA) expect(recorderB.eventsFor(user)).toEqual([]);
      expect(recorderC.eventsFor("carol")).toEqual([]);
      // Each member's event carries its own inbox position (1 was the group's creation).
      expect(recorderB.eventsFor(ahead).at(-1)?.position).toBe(3);
      expect(recorderB.eventsFor(behind).at(-1)?.position).toBe(2);

      // The offline member got it queued instead.
      const queued = await a.messages.readQueued("offline-olga", 0, 10, 1 << 20);
      expect(
        queued.map((m) => (JSON.parse(m.messageJson) as { content?: string }).content),
      ).toContain("hello");
    },
  );

  it("sends typing once per node holding members", async () => {
    const { a, recorders, onA, onB, groupId } = await cluster(3);
    const [recorderA, recorderB, recorderC] = recorders as [Recorder, Recorder, Recorder];
    const before = await publishes();
    await a.groups.publishToMembers("alice", groupId, '{"type":"typing"}');
    expect((await publishes()) - before).toBe(2);
    await eventually(() => {
      for (const user of onA) expect(recorderA.framesFor(user)).toEqual([{ type: "typing" }]);
      for (const user of onB) expect(recorderB.framesFor(user)).toEqual([{ type: "typing" }]);
    });
    expect(recorderA.framesFor("alice")).toEqual([]);
    expect(recorderC.framesFor("carol")).toEqual([]);
  });
});
