/**
 * Redis Cluster mode beyond the contract (contract.cluster.test.ts): the round trips of a DM,
 * a DM interrupted between its steps (completed by a retry on another node, or repaired by the
 * next send in the conversation), and a master killed during traffic (failover), with and
 * without REDIS_WAIT_REPLICAS. On a real 3-master, 3-replica cluster started by testkit.
 */
import { randomUUID } from "node:crypto";
import type { AppendInput, AppendResult, Engine, RateRefusal } from "@mrezhen/engine";
import { EngineUnavailableError } from "@mrezhen/engine";
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

    // MONITOR on every master, keeping the commands of this node's command connections.
    const monitors: Redis[] = [];
    const seen: { time: number; command: string }[] = [];
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
          if (addresses.includes(source)) seen.push({ time: Number(time), command: args[0] ?? "" });
        });
      } finally {
        admin.disconnect();
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 300));

    /** The commands of one send, once MONITOR has caught up. */
    async function commandsOf(send: () => Promise<unknown>): Promise<string[]> {
      await send();
      await new Promise((resolve) => setTimeout(resolve, 300));
      // The pending entry leaves with the conversation's next owner step, or a ZREM within a
      // second after the ack: not part of the DM's round trips.
      return seen
        .splice(0)
        .map((entry) => entry.command.toLowerCase())
        .filter((command) => command !== "zrem");
    }
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
    for (const monitor of monitors) monitor.disconnect();
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
