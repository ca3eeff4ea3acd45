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
    return { a, b, online, others, groupId, created };
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
          expect(result.status).toBe("delivered");
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

  it("finishes an entry whose node died mid fan-out: on the retry, or with the group's next entry", async () => {
    const { a, b, others, groupId } = await bigGroup();
    const died = new Error("node died");
    injectGroupFanOutFaultForTests(a, () => {
      throw died;
    });
    // A dies after the first chunk it drives: the numbering script's chunk and that one, 128
    // members, have it (the sender first).
    const first = groupInput(groupId, "s1", "first", { clientMsgId: "c1" });
    await expect(a.groups.append(first)).rejects.toBe(died);
    const [last] = (await log(b, groupId)).slice(-1) as [Entry];
    expect(last.id).toBe(first.id);
    const s1Entry = (await inbox(b, "s1", groupId)).find((entry) => entry.id === first.id);
    expect(s1Entry).toBeDefined();
    let reached = 0;
    for (const user of ["admin", "s1", "s2", ...others]) {
      if ((await inbox(b, user, groupId)).some((entry) => entry.id === first.id)) reached++;
    }
    expect(reached).toBe(2 * CHUNK_MEMBERS);

    // The client's retry, on B: the original's answer, stored once, fanned out to all.
    const retried = (await b.groups.append({
      ...groupInput(groupId, "s1", "first", { clientMsgId: "c1" }),
    })) as GroupAppendResult;
    expect(retried).toMatchObject({
      duplicate: true,
      messageId: first.id,
      seq: 2,
      senderPosition: s1Entry?.position,
    });

    // Again, and this time the group's next entry (s2 on B) finishes it.
    const second = groupInput(groupId, "s1", "second", { clientMsgId: "c2" });
    await expect(a.groups.append(second)).rejects.toBe(died);
    const next = (await b.groups.append(groupInput(groupId, "s2", "next"))) as GroupAppendResult;
    expect(next.seq).toBe(4);
    for (const user of ["admin", "s1", "s2", ...others]) {
      const got = await inbox(b, user, groupId);
      expect(
        got.map((entry) => entry.seq),
        user,
      ).toEqual([1, 2, 3, 4]);
    }
    // Its retry now reads the completed idempotency record: no chunk left to run.
    injectGroupFanOutFaultForTests(a, undefined);
    const s1Second = (await inbox(b, "s1", groupId)).find((entry) => entry.seq === 3);
    const again = (await a.groups.append({
      ...groupInput(groupId, "s1", "second", { clientMsgId: "c2" }),
    })) as GroupAppendResult;
    expect(again).toMatchObject({
      duplicate: true,
      messageId: second.id,
      seq: 3,
      senderPosition: s1Second?.position,
      status: "delivered",
    });
    expect((await log(a, groupId)).map((entry) => entry.seq)).toEqual([1, 2, 3, 4]);
  }, 60_000);

  it("finishes an entry whose node died mid fan-out at another node's heartbeat, with no retry and no next entry", async () => {
    const { a, b, others, groupId } = await bigGroup(100);
    injectGroupFanOutFaultForTests(a, () => {
      throw new Error("node died");
    });
    const lost = groupInput(groupId, "s1", "no retry");
    await expect(a.groups.append(lost)).rejects.toThrow("node died");
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
});
