/**
 * Redis Cluster mode beyond the contract (contract.cluster.test.ts): the round trips of a DM,
 * a DM interrupted between its steps (completed by a retry on another node, or repaired by the
 * next send in the conversation), and a master killed during traffic (failover), with and
 * without REDIS_WAIT_REPLICAS; groups across nodes, racing a removal, and interrupted between
 * their steps. On a real 3-master, 3-replica cluster started by testkit.
 */
import { randomUUID } from "node:crypto";
import type {
  AppendInput,
  AppendResult,
  Engine,
  GroupAppendInput,
  GroupAppendResult,
  RateRefusal,
} from "@mrezhen/engine";
import { EngineUnavailableError } from "@mrezhen/engine";
import { entryLabel, groupInboxLabels, groupInput, Recorder } from "@mrezhen/engine/contract";
import { eventually, redisClusterForTests } from "@mrezhen/testkit";
import { Redis } from "ioredis";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import {
  createRedisEngine,
  injectClusterFaultForTests,
  type RedisEngineOptions,
} from "../src/index.js";
import { RATE } from "./helpers.js";

const cluster = await redisClusterForTests();
afterAll(() => cluster?.close());

const engines: Engine[] = [];
afterEach(async () => {
  await Promise.all(engines.splice(0).map((engine) => engine.close()));
});

async function node(keyPrefix: string, options: Partial<RedisEngineOptions> = {}): Promise<Engine> {
  if (!cluster) throw new Error("unreachable: skipped without a cluster");
  const nodeId = `node-${randomUUID().slice(0, 8)}`;
  const engine = await createRedisEngine({
    url: "",
    clusterNodes: cluster.nodes,
    keyPrefix,
    nodeId,
    rateLimit: RATE,
    ...options,
  });
  engines.push(engine);
  return engine;
}

function message(from: string, to: string, extra: Partial<AppendInput> = {}): AppendInput {
  return {
    id: randomUUID(),
    from,
    to,
    content: `hello ${randomUUID().slice(0, 6)}`,
    timestamp: new Date().toISOString(),
    senderConnId: `${from}-conn`,
    ...extra,
  };
}

function acked(result: AppendResult | RateRefusal): AppendResult {
  if ("refused" in result) throw new Error(`refused: ${result.limit}`);
  return result;
}

/** Message ids of a user's inbox, in position order. */
async function inboxIds(engine: Engine, userId: string): Promise<string[]> {
  const page = await engine.messages.readInbox(userId, 0, 10_000);
  return page.entries.map((entry) => entry.messageId);
}

async function historyIds(engine: Engine, a: string, b: string): Promise<string[]> {
  const page = await engine.messages.history(a, b, 10_000);
  return page.messages.map((text) => (JSON.parse(text) as { id: string }).id);
}

/**
 * MONITOR on every master of the cluster, keeping the commands of one node's command
 * connections: commandsOf(send) runs a send and answers the commands it cost, in order; with
 * `inScripts`, the commands its scripts ran instead (MONITOR shows them with the source `lua`:
 * only meaningful while nothing else runs scripts on the cluster).
 */
async function monitorCommands(nodeId: string): Promise<{
  commandsOf(send: () => Promise<unknown>, inScripts?: boolean): Promise<string[]>;
  close(): void;
}> {
  if (!cluster) throw new Error("unreachable: skipped without a cluster");
  const monitors: Redis[] = [];
  const seen: { time: number; command: string; lua: boolean }[] = [];
  for (const seed of cluster.nodes) {
    const port = Number(seed.split(":")[1]);
    const admin = new Redis({ port, host: "127.0.0.1", lazyConnect: true });
    admin.on("error", () => {});
    try {
      await admin.connect();
      const role = (await admin.call("ROLE")) as unknown[];
      if (role[0] !== "master") continue;
      const list = String(await admin.client("LIST"));
      const addresses = list
        .split("\n")
        .filter((line) => line.includes(` name=mrezhen:${nodeId}:command `))
        .map((line) => /\baddr=(\S+)/.exec(line)?.[1]);
      const monitor = await admin.monitor();
      monitor.on("error", () => {});
      monitors.push(monitor);
      monitor.on("monitor", (time: string, args: string[], source: string) => {
        if (addresses.includes(source) || source === "lua") {
          seen.push({ time: Number(time), command: args[0] ?? "", lua: source === "lua" });
        }
      });
    } finally {
      admin.disconnect();
    }
  }
  await new Promise((resolve) => setTimeout(resolve, 300));
  return {
    async commandsOf(send, inScripts = false) {
      await send();
      await new Promise((resolve) => setTimeout(resolve, 300));
      // The pending entry leaves with the conversation's next owner step, or a ZREM within a
      // second after the ack: not part of the DM's round trips.
      return seen
        .splice(0)
        .filter((entry) => entry.lua === inScripts)
        .map((entry) => entry.command.toLowerCase())
        .filter((command) => command !== "zrem");
    },
    close() {
      for (const monitor of monitors) monitor.disconnect();
    },
  };
}

describe.skipIf(!cluster)("redis engine on Redis Cluster", () => {
  const prefix = () => `${cluster?.prefix}${randomUUID().slice(0, 8)}:`;

  it("costs at most 3 round trips per DM (2 from the conversation's owner, and without clientMsgId and limits)", async () => {
    if (!cluster) return;
    const keyPrefix = prefix();
    const nodeId = `rt-${randomUUID().slice(0, 8)}`;
    const engine = await node(keyPrefix, {
      heartbeatIntervalMs: 60_000,
      nodeTtlMs: 180_000,
      nodeId,
    });
    await engine.broker.subscribe("bob");
    await engine.presence.connect("bob");

    const { commandsOf, close } = await monitorCommands(nodeId);
    const limited = (from: string, to: string, clientMsgId: string) => () =>
      engine.messages.appendIfAllowed(message(from, to, { clientMsgId })).then(acked);

    // alice owns the alice-bob conversation ("alice" < "bob"): her check, the seq and her side
    // are one script, bob's side the second.
    let result: AppendResult | undefined;
    let elapsed = 0;
    const byOwner = await commandsOf(async () => {
      const started = performance.now();
      result = await limited("alice", "bob", "k1")();
      elapsed = performance.now() - started;
    });
    expect(result).toMatchObject({ status: "delivered", seq: 1, duplicate: false });
    expect(byOwner).toEqual(["evalsha", "evalsha"]);
    // bob is not the owner: his check (his slot), alice's side with the seq, then his side.
    const byOther = await commandsOf(limited("bob", "alice", "k2"));
    expect(byOther).toEqual(["evalsha", "evalsha", "evalsha"]);
    // Without a clientMsgId and limits there is no check: two scripts either way.
    const plain = await commandsOf(() => engine.messages.append(message("bob", "alice")));
    expect(plain).toEqual(["evalsha", "evalsha"]);
    console.log(
      `[round trips] cluster DM with clientMsgId and limits: 2 round trips from the conversation's ` +
        `owner, 3 from the other user (${elapsed.toFixed(1)} ms with MONITOR on); without: 2`,
    );
    close();
  });

  it("finishes a DM interrupted between its steps when the client retries on another node", async () => {
    const keyPrefix = prefix();
    const [a, b] = [await node(keyPrefix), await node(keyPrefix)];
    injectClusterFaultForTests(a, (step) => {
      if (step === "conversation") throw new EngineUnavailableError("node died (injected)");
    });
    const first = message("alice", "bob", { clientMsgId: "retry-me" });
    await expect(a.messages.appendIfAllowed(first)).rejects.toThrow("injected");
    // Half-done: in the history and in the owner's (alice's) inbox, not in bob's.
    expect(await historyIds(b, "alice", "bob")).toEqual([first.id]);
    expect(await inboxIds(b, "bob")).toEqual([]);
    expect(await inboxIds(b, "alice")).toEqual([first.id]);

    // The retry (another node, a new server-side id, same clientMsgId) completes the original.
    const retry = acked(
      await b.messages.appendIfAllowed({ ...first, id: randomUUID(), content: "changed" }),
    );
    expect(retry).toMatchObject({ messageId: first.id, seq: 1, duplicate: true, status: "queued" });
    expect(await historyIds(b, "alice", "bob")).toEqual([first.id]);
    expect(await inboxIds(b, "bob")).toEqual([first.id]);
    expect(await inboxIds(b, "alice")).toEqual([first.id]);
    const queued = await b.messages.readQueued("bob", 0, 10);
    expect(queued.map((entry) => entry.messageId)).toEqual([first.id]);
    expect(JSON.parse(queued[0]?.messageJson ?? "{}")).toMatchObject({ content: first.content });

    // A second retry is answered by the steps' markers: nothing is stored twice.
    injectClusterFaultForTests(a, undefined);
    const again = acked(await a.messages.appendIfAllowed({ ...first, id: randomUUID() }));
    expect(again).toEqual({ ...retry });
    expect(await inboxIds(b, "bob")).toEqual([first.id]);
    expect(await historyIds(b, "alice", "bob")).toEqual([first.id]);
  });

  it("repairs a DM left half-done without a retry at the next send in its conversation", async () => {
    const keyPrefix = prefix();
    const [a, b] = [
      await node(keyPrefix, { repairAfterMs: 300 }),
      await node(keyPrefix, { repairAfterMs: 300 }),
    ];
    injectClusterFaultForTests(a, (step) => {
      if (step === "conversation") throw new EngineUnavailableError("node died (injected)");
    });
    const lost = message("alice", "bob");
    await expect(a.messages.append(lost)).rejects.toThrow("injected");
    expect(await historyIds(b, "alice", "bob")).toEqual([lost.id]);
    expect(await inboxIds(b, "bob")).toEqual([]);

    await new Promise((resolve) => setTimeout(resolve, 400));
    const next = message("bob", "alice");
    acked(await b.messages.append(next));
    await eventually(async () => {
      expect(new Set(await inboxIds(b, "bob"))).toEqual(new Set([lost.id, next.id]));
      expect(new Set(await inboxIds(b, "alice"))).toEqual(new Set([lost.id, next.id]));
    });
    expect(await historyIds(b, "alice", "bob")).toEqual([lost.id, next.id]);
    console.log(
      "[repair] the half-done DM reached both inboxes at the next send in its conversation",
    );
  });

  /**
   * Sends from several senders to `busy` (whose slot's master is killed mid-way), each message
   * retried with its clientMsgId until acked (as a client does), then checks every acked message
   * is in the busy user's inbox and the history.
   */
  async function failover(
    waitReplicas: number,
  ): Promise<{ acked: number; lost: number; failed: number }> {
    if (!cluster) throw new Error("unreachable");
    // Every shard with a synced replica (an earlier failover test restarted its victim).
    await cluster.waitForOk(30_000);
    const keyPrefix = prefix();
    const options = { waitReplicas, heartbeatIntervalMs: 500, nodeTtlMs: 30_000 };
    const [a, b] = [await node(keyPrefix, options), await node(keyPrefix, options)];
    const busy = `busy-${randomUUID().slice(0, 4)}`;
    const busyKey = `${keyPrefix}inbox-log:{u:${busy}}`;
    const victim = await cluster.masterOf(busyKey);
    const ackedIds: { from: string; id: string }[] = [];
    let failed = 0;
    let stop = false;
    const senders = Array.from({ length: 4 }, async (_, s) => {
      const from = `sender-${s}`;
      const engine = s % 2 === 0 ? a : b;
      for (let i = 0; !stop; i++) {
        const input = message(from, busy, { clientMsgId: `${from}-${i}` });
        for (let attempt = 0; ; attempt++) {
          // A client gives up at some point too: counted as not acked, so not as lost.
          if (stop && attempt >= 50) break;
          try {
            const result = acked(
              await engine.messages.appendIfAllowed({ ...input, id: randomUUID() }),
            );
            ackedIds.push({ from, id: result.messageId });
            break;
          } catch {
            failed++;
            await new Promise((resolve) => setTimeout(resolve, 100));
          }
        }
      }
    });
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const killedAt = ackedIds.length;
    await cluster.kill(victim);
    const killed = Date.now();
    // The replica is promoted once the others agree the master is gone (node timeout 1 s).
    await eventually(async () => {
      expect(await cluster.masterOf(busyKey)).not.toBe(victim);
    }, 30_000);
    await cluster.waitForOk(30_000);
    const promotionMs = Date.now() - killed;
    // The old master comes back as a replica of the new one (so WAIT 1 can be met again).
    await cluster.restart(victim);
    await cluster.waitForOk(30_000);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    stop = true;
    await Promise.all(senders);
    const inbox = new Set(await inboxIds(a, busy));
    let lost = 0;
    for (const { from, id } of ackedIds) {
      if (!inbox.has(id)) lost++;
      else if (!(await historyIds(a, from, busy)).includes(id)) lost++;
    }
    console.log(
      `[failover] REDIS_WAIT_REPLICAS=${waitReplicas}: master :${victim} killed after ${killedAt} acks; ` +
        `cluster ok again ${promotionMs} ms later; ${ackedIds.length} acked in all, ${failed} attempts failed ` +
        `and were retried, ${lost} acked messages lost`,
    );
    expect(a.health()).toEqual({ ok: true });
    expect(ackedIds.length).toBeGreaterThan(killedAt);
    return { acked: ackedIds.length, lost, failed };
  }

  it.skipIf(!cluster?.owned)(
    "survives kill -9 of the busy user's master with REDIS_WAIT_REPLICAS=1: no acked message lost",
    async () => {
      const { lost } = await failover(1);
      expect(lost).toBe(0);
    },
    90_000,
  );

  it.skipIf(!cluster?.owned)(
    "measures what kill -9 of a master loses with REDIS_WAIT_REPLICAS=0",
    async () => {
      await failover(0);
    },
    90_000,
  );
});

/**
 * Groups on Redis Cluster (cluster-groups.ts): the group's step, then a step per member in its
 * slot. Engines sharing a key prefix stand for nodes of one deployment.
 */
describe.skipIf(!cluster)("groups on Redis Cluster", () => {
  const prefix = () => `${cluster?.prefix}${randomUUID().slice(0, 8)}:`;

  async function send(engine: Engine, input: GroupAppendInput): Promise<GroupAppendResult> {
    const result = await engine.groups.append(input);
    if ("refused" in result) throw new Error(`refused: ${result.limit}`);
    return result;
  }

  async function createGroup(engine: Engine, createdBy: string, members: string[]) {
    return engine.groups.create({
      groupId: randomUUID(),
      name: "team",
      createdBy,
      members,
      eventId: randomUUID(),
      timestamp: new Date().toISOString(),
    });
  }

  /** The group's whole log, as labels, in seq order (checked gap-free). */
  async function logOf(engine: Engine, reader: string, groupId: string): Promise<string[]> {
    const page = await engine.groups.history(reader, groupId, 10_000);
    const seqs = page.messages.map((m) => (JSON.parse(m) as { seq: number }).seq);
    expect(seqs).toEqual(seqs.map((_, i) => i + 1));
    return page.messages.map(entryLabel);
  }

  it("delivers across nodes, to a member's two devices on two nodes, and to an offline member on reconnect", async () => {
    const keyPrefix = prefix();
    const [a, b] = [await node(keyPrefix), await node(keyPrefix)];
    const [onA, onB] = [new Recorder(), new Recorder()];
    a.broker.setHandler(onA);
    b.broker.setHandler(onB);
    // alice on node A; bob with a phone on A and a laptop on B; carol offline.
    await a.broker.subscribe("alice");
    await a.presence.connect("alice");
    await a.broker.subscribe("bob");
    await a.presence.connect("bob");
    await b.broker.subscribe("bob");
    await b.presence.connect("bob");
    const { groupId } = (await createGroup(a, "alice", ["bob", "carol"])).group;

    // Concurrent senders on two nodes: every member's stream is the log's order all the same.
    const sends = Array.from({ length: 10 }, (_, i) =>
      i % 2 === 0
        ? send(a, groupInput(groupId, "alice", `a${i}`))
        : send(b, groupInput(groupId, "bob", `b${i}`, { senderConnId: "bob-laptop" })),
    );
    const results = await Promise.all(sends);
    const log = await logOf(b, "carol", groupId);
    expect(log).toHaveLength(11);
    for (const user of ["alice", "bob", "carol"]) {
      expect(await groupInboxLabels(b, user, groupId)).toEqual(log);
    }
    // alice's messages reached bob live on both nodes, at bob's own inbox positions.
    const bobInbox = await b.messages.readInbox("bob", 0, 100);
    const positionOf = new Map(bobInbox.entries.map((e) => [e.messageId, e.position]));
    const fromAlice = results.filter((_, i) => i % 2 === 0).map((r) => r.messageId);
    for (const recorder of [onA, onB]) {
      await eventually(() => {
        const live = recorder.eventsFor("bob").filter((e) => e.groupId === groupId);
        for (const id of fromAlice) {
          expect(live.find((e) => e.messageId === id)?.position).toBe(positionOf.get(id));
        }
      });
    }
    // bob's own messages: acked to the laptop, copied to the phone (the laptop excluded).
    const fromBob = results.filter((_, i) => i % 2 === 1);
    for (const result of fromBob) {
      expect(result.status).toBe("delivered");
      expect(result.senderPosition).toBe(positionOf.get(result.messageId));
    }
    await eventually(() => {
      const copies = onA.eventsFor("bob").filter((e) => e.excludeConnId === "bob-laptop");
      expect(copies.map((e) => e.messageId).sort()).toEqual(fromBob.map((r) => r.messageId).sort());
    });

    // carol was offline: everything waits in her queue, in the log's order.
    const queued = await b.messages.readQueued("carol", 0, 100);
    expect(queued.map((q) => entryLabel(q.messageJson))).toEqual(log);
    // She reconnects on node B: her sync from 0 is the log, and what follows reaches her live.
    await b.broker.subscribe("carol");
    await b.presence.connect("carol");
    const synced = await b.messages.readInbox("carol", 0, 100);
    expect(synced.entries.map((e) => entryLabel(e.messageJson))).toEqual(log);
    const later = await send(a, groupInput(groupId, "alice", "welcome back"));
    expect(later.status).toBe("delivered");
    await eventually(() =>
      expect(onB.eventsFor("carol").map((e) => entryLabel(e.messageJson))).toEqual([
        "welcome back",
      ]),
    );
    // Unread counts and conversations, from either node.
    expect((await a.messages.conversations("carol", 10))[0]).toMatchObject({
      with: groupId,
      unread: 11,
    });
  });

  it("costs 3 round trips per message: the rate, the group's step, one step per member (together)", async () => {
    const keyPrefix = prefix();
    const nodeId = `rt-${randomUUID().slice(0, 8)}`;
    const engine = await node(keyPrefix, {
      heartbeatIntervalMs: 60_000,
      nodeTtlMs: 180_000,
      nodeId,
    });
    const members = ["m1", "m2", "m3", "m4"];
    const { groupId } = (await createGroup(engine, "alice", members)).group;
    // Two members online (on this node), two offline; alice sends from her only connection.
    for (const user of ["alice", "m1", "m2"]) {
      await engine.broker.subscribe(user);
      await engine.presence.connect(user);
    }
    const { commandsOf, close } = await monitorCommands(nodeId);
    const sendOne = (clientMsgId: string) => () =>
      send(engine, groupInput(groupId, "alice", "cost", { clientMsgId }));
    const commands = await commandsOf(sendOne("c1"));
    // CONSUME, then the group's step beside an HGET of the sender's connections, then 5 steps.
    expect(commands.filter((c) => c === "evalsha")).toHaveLength(7);
    expect(commands.filter((c) => c !== "evalsha")).toEqual(["hget"]);
    const inScripts = await commandsOf(sendOne("c2"), true);
    close();
    // docs/groups.md: 16 + 7n commands in the scripts, plus 2 per offline member.
    expect(inScripts).toHaveLength(16 + 7 * 5 + 2 * 2);
    console.log(
      `[group cost] cluster, 5 members (2 online, 2 offline, the sender): ${commands.length} ` +
        `commands from the node, ${inScripts.length} run by its scripts: ${inScripts.join(" ")}`,
    );
  });

  it("puts every message racing a removal on exactly one side of it, in every member's stream", async () => {
    const keyPrefix = prefix();
    const [a, b] = [await node(keyPrefix), await node(keyPrefix)];
    for (let round = 0; round < 5; round++) {
      const { groupId } = (await createGroup(a, "admin", ["bob", "carol", "dave"])).group;
      const sends = Array.from({ length: 20 }, (_, i) =>
        send(i % 2 === 0 ? a : b, groupInput(groupId, i % 4 < 2 ? "carol" : "dave", `m${i}`)),
      );
      const removal = (round % 2 === 0 ? a : b).groups.change({
        groupId,
        actor: "admin",
        kind: "remove",
        userId: "bob",
        eventId: randomUUID(),
        timestamp: new Date().toISOString(),
      });
      await Promise.all([...sends, removal]);
      const log = await logOf(a, "admin", groupId);
      expect(log).toHaveLength(22);
      const removedAt = log.indexOf("removed:bob");
      // bob: the log up to his removal, nothing after, nothing missing.
      expect(await groupInboxLabels(b, "bob", groupId)).toEqual(log.slice(0, removedAt + 1));
      for (const member of ["admin", "carol", "dave"]) {
        expect(await groupInboxLabels(a, member, groupId)).toEqual(log);
      }
    }
  });

  it("finishes an entry interrupted after the group's step: by the retry, or by the group's next entry", async () => {
    const keyPrefix = prefix();
    const [a, b] = [await node(keyPrefix), await node(keyPrefix)];
    const { groupId } = (await createGroup(a, "alice", ["bob", "carol"])).group;
    injectClusterFaultForTests(a, (step) => {
      if (step === "group") throw new EngineUnavailableError("node died (injected)");
    });
    const first = groupInput(groupId, "alice", "retry me", { clientMsgId: "k1" });
    await expect(a.groups.append(first)).rejects.toThrow("injected");
    // Stored in the group's log, in nobody's inbox yet.
    expect(await logOf(b, "bob", groupId)).toEqual(["created", "retry me"]);
    expect(await groupInboxLabels(b, "bob", groupId)).toEqual(["created"]);

    // The retry (another node, a new id, same clientMsgId) finishes the original.
    const retry = await send(b, { ...first, id: randomUUID(), content: "changed" });
    expect(retry).toMatchObject({ messageId: first.id, seq: 2, duplicate: true });
    for (const user of ["alice", "bob", "carol"]) {
      expect(await groupInboxLabels(b, user, groupId)).toEqual(["created", "retry me"]);
    }
    const aliceInbox = await b.messages.readInbox("alice", 0, 100);
    expect(aliceInbox.entries.at(-1)?.position).toBe(retry.senderPosition);
    // Again: answered by the members' cursors and markers, nothing stored twice.
    expect(await send(b, { ...first, id: randomUUID() })).toEqual(retry);

    // Interrupted with no retry: the group's next entry, from anyone, fills the gap first.
    await expect(a.groups.append(groupInput(groupId, "alice", "lost?"))).rejects.toThrow(
      "injected",
    );
    injectClusterFaultForTests(a, undefined);
    await send(b, groupInput(groupId, "bob", "next"));
    for (const user of ["alice", "bob", "carol"]) {
      expect(await groupInboxLabels(a, user, groupId)).toEqual([
        "created",
        "retry me",
        "lost?",
        "next",
      ]);
    }
  });
});
