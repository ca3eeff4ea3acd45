/**
 * Chunked fan-out of large groups on a standalone Redis (groups.ts, GROUP_FAN_OUT): an entry to
 * more than chunkAbove members is written into their inboxes by scripts of at most chunkMembers
 * members each, from the group's fan-out queue, in seq order, by whichever node drives it. On a
 * redis-server of its own, so that MONITOR sees no other test's scripts.
 */
import { randomUUID } from "node:crypto";
import type { Engine, GroupAppendResult } from "@mrezhen/engine";
import { groupInput, Recorder } from "@mrezhen/engine/contract";
import { deletePrefix, eventually, ownRedisServer } from "@mrezhen/testkit";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { injectGroupFanOutFaultForTests } from "../src/index.js";
import { closeEngines, goOnline, rawClient, startEngine } from "./helpers.js";

const redis = await ownRedisServer();
afterAll(() => redis?.stop());

/** Low, so that 600 members take ten chunks an entry. */
const CHUNK_MEMBERS = 64;
const FAN_OUT = { chunkAbove: 100, chunkMembers: CHUNK_MEMBERS };
const MEMBERS = 600;

interface Entry {
  readonly seq: number;
  readonly id: string;
}

describe.skipIf(!redis)("redis engine: chunked fan-out of large groups", () => {
  const url = redis?.url ?? "";
  const keyPrefix = `chunked:${randomUUID().slice(0, 8)}:`;
  afterEach(async () => {
    await closeEngines();
    await deletePrefix(url, keyPrefix);
  });

  /**
   * Two nodes; the admin and s1 on A, s2 on B, 20 more members online on each, the rest not.
   * A long heartbeat (no finishFanOuts) unless B's is given.
   */
  async function bigGroup(heartbeatOfB = 60_000) {
    const options = {
      url,
      keyPrefix,
      heartbeatIntervalMs: 60_000,
      nodeTtlMs: 180_000,
      groupFanOut: FAN_OUT,
    };
    const [a, b] = (await Promise.all([
      startEngine(options),
      startEngine({ ...options, heartbeatIntervalMs: heartbeatOfB }),
    ])) as [Engine, Engine];
    const recorders = [a, b].map((engine) => {
      const recorder = new Recorder();
      engine.broker.setHandler(recorder);
      return recorder;
    }) as [Recorder, Recorder];
    const others = Array.from({ length: MEMBERS - 3 }, (_, i) => `m|${i}`);
    const online = new Map<string, Recorder>([
      ["admin", recorders[0]],
      ["s1", recorders[0]],
      ["s2", recorders[1]],
    ]);
    for (const [i, user] of others.slice(0, 40).entries())
      online.set(user, recorders[i % 2 === 0 ? 0 : 1]);
    for (const [user, recorder] of online) await goOnline(recorder === recorders[0] ? a : b, user);
    const groupId = `big|${randomUUID().slice(0, 8)}`;
    const created = await a.groups.create({
      groupId,
      name: "big",
      createdBy: "admin",
      members: ["s1", "s2", ...others],
      eventId: randomUUID(),
      timestamp: new Date().toISOString(),
    });
    // The creation is acked before its fan-out is through: A finishes it in the background.
    await drained(groupId);
    return { a, b, online, others, groupId, created };
  }

  /** Waits until the group's fan-out queue is empty. */
  async function drained(groupId: string) {
    const raw = rawClient(url);
    try {
      await eventually(async () => {
        expect(await raw.exists(`${keyPrefix}group-fanout:{g:${groupId}}`)).toBe(0);
      }, 10_000);
    } finally {
      raw.disconnect();
    }
  }

  /** The group's log, as (seq, id). */
  async function log(engine: Engine, groupId: string): Promise<Entry[]> {
    const page = await engine.groups.history("admin", groupId, 1000);
    return page.messages.map((json) => JSON.parse(json) as Entry);
  }

  /** The group's entries in a user's inbox, in position order. */
  async function inbox(engine: Engine, user: string, groupId: string) {
    const page = await engine.messages.readInbox(user, 0, 1000);
    return page.entries
      .filter((entry) => entry.groupId === groupId)
      .map((entry) => ({ ...(JSON.parse(entry.messageJson) as Entry), position: entry.position }));
  }

  it("writes every entry once, in seq order, with concurrent senders on two nodes, at most chunkMembers members a script", async () => {
    const { a, b, online, others, groupId, created } = await bigGroup();
    expect(created.position).toBe(1);
    const removed = others[0] as string;
    const admin = rawClient(url);
    const monitor = await admin.monitor();
    /** Members written (INCR of an inbox position) by each script, in the order they ran. */
    const perScript: number[] = [];
    monitor.on("monitor", (_time: string, args: string[], source: string) => {
      const command = String(args[0]).toLowerCase();
      if (source !== "lua" && (command === "evalsha" || command === "eval")) perScript.push(0);
      else if (
        source === "lua" &&
        command === "incr" &&
        args[1]?.startsWith(`${keyPrefix}inbox-pos:`)
      )
        perScript[perScript.length - 1] = (perScript.at(-1) ?? 0) + 1;
    });
    try {
      const sends = (engine: Engine, from: string) => async () => {
        const results: GroupAppendResult[] = [];
        for (let i = 0; i < 6; i++) {
          const input = groupInput(groupId, from, `${from} ${i}`, { clientMsgId: `${from}-${i}` });
          results.push((await engine.groups.append(input)) as GroupAppendResult);
        }
        return results;
      };
      const change = (engine: Engine, kind: "add" | "remove", userId: string) =>
        engine.groups.change({
          groupId,
          actor: "admin",
          kind,
          userId,
          eventId: randomUUID(),
          timestamp: new Date().toISOString(),
        });
      const [fromS1, fromS2, added, removal] = await Promise.all([
        sends(a, "s1")(),
        sends(b, "s2")(),
        change(b, "add", "late"),
        change(a, "remove", removed),
      ]);
      // Acked once in the senders' inboxes: the nodes finish the fan-outs after their acks.
      await drained(groupId);
      await new Promise((resolve) => setTimeout(resolve, 200)); // MONITOR catches up.

      const entries = await log(a, groupId);
      expect(entries.map((entry) => entry.seq)).toEqual(
        Array.from({ length: 15 }, (_, i) => i + 1),
      );
      const expected = (user: string) =>
        entries.filter(
          (entry) =>
            (user !== removed || entry.seq <= removal.seq) &&
            (user !== "late" || entry.seq >= added.seq),
        );
      let written = 0;
      for (const user of ["admin", "s1", "s2", "late", ...others]) {
        const got = await inbox(a, user, groupId);
        const want = expected(user);
        written += want.length;
        expect(
          got.map((entry) => entry.id),
          user,
        ).toEqual(want.map((entry) => entry.id));
        // Every ack's position is the sender's inbox entry.
        for (const result of user === "s1" ? fromS1 : user === "s2" ? fromS2 : []) {
          expect(got.find((entry) => entry.position === result.senderPosition)?.seq).toBe(
            result.seq,
          );
          // (delivered or queued by the members written before the ack: not asserted here.)
        }
        const recorder = online.get(user);
        if (recorder === undefined || user === "s1" || user === "s2") continue;
        // Live events in seq order, each with the member's own position.
        const live = recorder
          .eventsFor(user)
          .filter((event) => event.groupId === groupId)
          .map((event) => ({
            seq: (JSON.parse(event.messageJson) as Entry).seq,
            p: event.position,
          }));
        expect(live, user).toEqual(got.map((entry) => ({ seq: entry.seq, p: entry.position })));
      }
      // The offline members got them queued.
      const queued = await a.messages.readQueued(others.at(-1) as string, 0, 1000);
      expect(queued.filter((m) => m.groupId === groupId).map((m) => m.messageId)).toEqual(
        entries.map((entry) => entry.id),
      );

      // Nothing left in the queue; every inbox write in a script of at most CHUNK_MEMBERS.
      expect(await admin.exists(`${keyPrefix}group-fanout:{g:${groupId}}`)).toBe(0);
      expect(perScript.reduce((sum, n) => sum + n, 0)).toBe(written - MEMBERS); // the creation aside
      expect(Math.max(...perScript)).toBe(CHUNK_MEMBERS);
    } finally {
      monitor.disconnect();
      admin.disconnect();
    }
  }, 60_000);

  /** The members (of all) whose inbox has the entry `id`. */
  async function reached(engine: Engine, groupId: string, users: string[], id: string) {
    let count = 0;
    for (const user of users) {
      if ((await inbox(engine, user, groupId)).some((entry) => entry.id === id)) count++;
    }
    return count;
  }

  it("acks once the sender's inbox and the fan-out queue have the entry, before the other inboxes", async () => {
    const { a, b, others, groupId } = await bigGroup();
    const everyone = ["admin", "s1", "s2", ...others];
    let release: () => void = () => {};
    const paused = new Promise<void>((resolve) => {
      release = resolve;
    });
    // A's background fan-out waits before its first chunk: only the numbering script's chunk
    // (the sender first) is written when the ack comes.
    injectGroupFanOutFaultForTests(a, () => paused);
    const input = groupInput(groupId, "s1", "early ack", { clientMsgId: "early" });
    const acked = (await a.groups.append(input)) as GroupAppendResult;
    expect(acked).toMatchObject({ duplicate: false, seq: 2 });
    const s1Entry = (await inbox(b, "s1", groupId)).find((entry) => entry.id === input.id);
    expect(s1Entry?.position).toBe(acked.senderPosition);
    expect((await log(b, groupId)).at(-1)?.id).toBe(input.id);
    expect(await reached(b, groupId, everyone, input.id)).toBe(CHUNK_MEMBERS);
    // A retry meanwhile: the same answer at once, from the idempotency record.
    const retried = (await b.groups.append(
      groupInput(groupId, "s1", "early ack", { clientMsgId: "early" }),
    )) as GroupAppendResult;
    expect(retried).toMatchObject({
      duplicate: true,
      messageId: input.id,
      seq: 2,
      senderPosition: acked.senderPosition,
    });
    release();
    await eventually(async () => {
      expect(await reached(b, groupId, everyone, input.id)).toBe(MEMBERS);
    }, 10_000);
    for (const user of everyone) {
      expect(
        (await inbox(b, user, groupId)).map((entry) => entry.seq),
        user,
      ).toEqual([1, 2]);
    }
  }, 60_000);

  it("finishes an entry whose node died after its ack: on the retry, or with the group's next entry", async () => {
    const { a, b, others, groupId } = await bigGroup();
    const everyone = ["admin", "s1", "s2", ...others];
    const died = new Error("node died");
    // A acks, then dies before its first background chunk: only the numbering script's chunk
    // (the sender first) has the entry.
    injectGroupFanOutFaultForTests(a, () => {
      throw died;
    });
    const first = groupInput(groupId, "s1", "first", { clientMsgId: "c1" });
    const acked = (await a.groups.append(first)) as GroupAppendResult;
    expect(acked).toMatchObject({ duplicate: false, messageId: first.id, seq: 2 });
    const [last] = (await log(b, groupId)).slice(-1) as [Entry];
    expect(last.id).toBe(first.id);
    const s1Entry = (await inbox(b, "s1", groupId)).find((entry) => entry.id === first.id);
    expect(s1Entry?.position).toBe(acked.senderPosition);
    expect(await reached(b, groupId, everyone, first.id)).toBe(CHUNK_MEMBERS);

    // The client's retry, on B (its ack was lost with A): the original's answer; B's node
    // finishes the fan-out after it.
    const retried = (await b.groups.append(
      groupInput(groupId, "s1", "first", { clientMsgId: "c1" }),
    )) as GroupAppendResult;
    expect(retried).toMatchObject({
      duplicate: true,
      messageId: first.id,
      seq: 2,
      senderPosition: s1Entry?.position,
    });
    await eventually(async () => {
      expect(await reached(b, groupId, everyone, first.id)).toBe(MEMBERS);
    }, 10_000);

    // Again, and this time the group's next entry (s2 on B) finishes it: its numbering script's
    // chunk goes to the earlier entry, so B runs chunks until s2's own inbox has it, acks, and
    // writes the rest after.
    const second = groupInput(groupId, "s1", "second", { clientMsgId: "c2" });
    expect(((await a.groups.append(second)) as GroupAppendResult).seq).toBe(3);
    const next = (await b.groups.append(groupInput(groupId, "s2", "next"))) as GroupAppendResult;
    expect(next.seq).toBe(4);
    const s2Next = (await inbox(b, "s2", groupId)).find((entry) => entry.seq === 4);
    expect(s2Next?.position).toBe(next.senderPosition);
    await eventually(async () => {
      for (const user of everyone) {
        const got = await inbox(b, user, groupId);
        expect(
          got.map((entry) => entry.seq),
          user,
        ).toEqual([1, 2, 3, 4]);
      }
    }, 10_000);
    // Its retry now reads the completed idempotency record (the final status with it).
    injectGroupFanOutFaultForTests(a, undefined);
    const s1Second = (await inbox(b, "s1", groupId)).find((entry) => entry.seq === 3);
    const again = (await a.groups.append(
      groupInput(groupId, "s1", "second", { clientMsgId: "c2" }),
    )) as GroupAppendResult;
    expect(again).toMatchObject({
      duplicate: true,
      messageId: second.id,
      seq: 3,
      senderPosition: s1Second?.position,
      status: "delivered",
    });
    expect((await log(a, groupId)).map((entry) => entry.seq)).toEqual([1, 2, 3, 4]);
  }, 60_000);

  it("finishes an entry whose node died after its ack at another node's heartbeat, with no retry and no next entry", async () => {
    const { a, b, others, groupId } = await bigGroup(100);
    injectGroupFanOutFaultForTests(a, () => {
      throw new Error("node died");
    });
    const lost = groupInput(groupId, "s1", "no retry");
    const acked = (await a.groups.append(lost)) as GroupAppendResult;
    expect(acked.seq).toBe(2);
    await eventually(async () => {
      for (const user of ["admin", "s1", "s2", ...others]) {
        const got = await inbox(b, user, groupId);
        expect(
          got.map((entry) => entry.id),
          user,
        ).toEqual([expect.any(String), lost.id]);
      }
    }, 10_000);
    const admin = rawClient(url);
    expect(await admin.smembers(`${keyPrefix}group-fanout-pending`)).toEqual([]);
    expect(await admin.exists(`${keyPrefix}group-fanout:{g:${groupId}}`)).toBe(0);
    admin.disconnect();
  }, 60_000);

  it("answers a membership change of a large group once its actor's inbox has it, the rest after", async () => {
    const { a, b, others, groupId } = await bigGroup();
    injectGroupFanOutFaultForTests(a, () => {
      throw new Error("node died");
    });
    const change = await a.groups.change({
      groupId,
      actor: "admin",
      kind: "rename",
      name: "bigger",
      eventId: randomUUID(),
      timestamp: new Date().toISOString(),
    });
    expect(change.seq).toBe(2);
    const adminEntry = (await inbox(b, "admin", groupId)).find((entry) => entry.seq === 2);
    expect(adminEntry?.position).toBe(change.position);
    // A died after its answer; the group's next entry, on B, finishes the rename's fan-out
    // first, so every member still has them in seq order.
    const next = (await b.groups.append(groupInput(groupId, "s2", "after"))) as GroupAppendResult;
    expect(next.seq).toBe(3);
    await eventually(async () => {
      for (const user of ["admin", "s1", "s2", ...others]) {
        expect(
          (await inbox(b, user, groupId)).map((entry) => entry.seq),
          user,
        ).toEqual([1, 2, 3]);
      }
    }, 10_000);
  }, 60_000);
});
