/**
 * A chaos test in the manner of Jepsen's checkers: senders and receivers on two nodes have their
 * connections cut at random; senders retry with the same clientMsgId, receivers resume with
 * `since`. Every ack and every delivery is recorded, then checked: nothing acked may be lost,
 * nothing stored twice, and every conversation must arrive in order. The same for groups, with
 * a member added and one removed mid-run: each member's stream must be exactly its slice of the
 * group's log, membership entries included, in seq order.
 */
import { randomUUID } from "node:crypto";
import { mintToken, redisClusterForTests, redisForTests } from "@mrezhen/testkit";
import { afterAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { startNode, type TestNode } from "./helpers.js";

const redis = await redisForTests();
const redisCluster = await redisClusterForTests();
afterAll(() => Promise.all([redis?.close(), redisCluster?.close()]));

const PAIRS = 6;
const MESSAGES_PER_SENDER = 500;
/** Chance that a sender's connection is cut right after a send, before its ack. */
const CUT_BEFORE_ACK = 0.03;
/** Chance that it is cut right after an ack. */
const CUT_AFTER_ACK = 0.02;

/** A small seeded PRNG (mulberry32), so a failing run can be replayed. */
function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Json = Record<string, unknown>;

/** Opens a raw socket and resolves once it is online (its first pong). */
async function open(url: string, onFrame: (frame: Json) => void): Promise<WebSocket> {
  const socket = new WebSocket(url);
  socket.on("message", (data) => onFrame(JSON.parse(data.toString()) as Json));
  socket.on("error", () => {});
  await new Promise<void>((resolve, reject) => {
    socket.once("open", resolve);
    socket.once("error", reject);
  });
  return socket;
}

/** Where a sender sends: a direct conversation or a group. */
type Target = { readonly to: string } | { readonly groupId: string };

class Sender {
  /** clientMsgId → messageId of every acked message. */
  readonly acked = new Map<string, string>();
  /** clientMsgId → seq of every acked message. */
  readonly seqs = new Map<string, number>();
  cuts = 0;

  constructor(
    readonly userId: string,
    readonly target: Target,
    private readonly nodes: TestNode[],
    private readonly random: () => number,
    private readonly count = MESSAGES_PER_SENDER,
  ) {}

  async run(): Promise<void> {
    const token = await mintToken({ sub: this.userId });
    const command = "to" in this.target ? "direct_message" : "group_message";
    // A group sender is a member, so it receives the group's messages too: connecting with a
    // cursor past its inbox skips the offline-queue flush of them, which this test does not read.
    const query = "to" in this.target ? "" : "&since=1000000000";
    let next = 0;
    while (next < this.count) {
      const node = this.nodes[Math.floor(this.random() * this.nodes.length)] as TestNode;
      let waiting: ((frame: Json) => void) | undefined;
      const socket = await open(`${node.wsUrl}?token=${token}${query}`, (frame) => {
        if (frame["type"] === "message_ack" || frame["type"] === "error") waiting?.(frame);
      });
      const closed = new Promise<null>((resolve) => socket.once("close", () => resolve(null)));
      while (next < this.count) {
        const clientMsgId = `${this.userId}-${next}`;
        const answer = new Promise<Json>((resolve) => {
          waiting = resolve;
        });
        socket.send(
          JSON.stringify({ type: command, ...this.target, content: `#${next}`, clientMsgId }),
        );
        if (this.random() < CUT_BEFORE_ACK) {
          socket.terminate(); // the message may or may not have been stored: retry it
          this.cuts++;
          break;
        }
        const frame = await Promise.race([answer, closed]);
        if (frame === null) break;
        if (frame["type"] !== "message_ack")
          throw new Error(`unexpected answer ${JSON.stringify(frame)}`);
        expect(frame["clientMsgId"]).toBe(clientMsgId);
        const earlier = this.acked.get(clientMsgId);
        if (earlier !== undefined && earlier !== frame["messageId"])
          throw new Error(`two ids for ${clientMsgId}`);
        this.acked.set(clientMsgId, frame["messageId"] as string);
        this.seqs.set(clientMsgId, frame["seq"] as number);
        next++;
        if (this.random() < CUT_AFTER_ACK) {
          socket.terminate();
          this.cuts++;
          break;
        }
      }
      socket.terminate();
    }
  }
}

/** An entry a receiver processed: a direct or group message, or a group's membership event. */
interface Processed {
  readonly id: string;
  readonly seq: number;
  readonly groupId: string | undefined;
}

class Receiver {
  /** messageId → seq, for every message processed (after dedupe). */
  readonly delivered = new Map<string, number>();
  /** Seqs in processing order. */
  readonly order: number[] = [];
  /** Every entry processed (after dedupe), in processing order. */
  readonly entries: Processed[] = [];
  lastPosition = 0;
  cuts = 0;
  frames = 0;
  gaps = 0;
  private stopping = false;

  constructor(
    readonly userId: string,
    private readonly nodes: TestNode[],
    private readonly random: () => number,
  ) {}

  /** Connects, processes for a random while, is cut, resumes from its last position; until stop(). */
  async run(): Promise<void> {
    const token = await mintToken({ sub: this.userId });
    while (!this.stopping) {
      const node = this.nodes[Math.floor(this.random() * this.nodes.length)] as TestNode;
      const socket = await this.connect(node, token);
      await new Promise((resolve) => setTimeout(resolve, 20 + this.random() * 150));
      socket.terminate();
      this.cuts++;
    }
  }

  /** Stops the cutting loop, then does a last resume and waits until the inbox is drained. */
  async finish(expected: number): Promise<void> {
    this.stopping = true;
    const token = await mintToken({ sub: this.userId });
    const socket = await this.connect(this.nodes[0] as TestNode, token);
    const deadline = Date.now() + 15_000;
    while (this.delivered.size < expected && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    socket.close();
  }

  private connect(node: TestNode, token: string): Promise<WebSocket> {
    let socket: WebSocket | undefined;
    const opened = open(`${node.wsUrl}?token=${token}&since=${this.lastPosition}`, (frame) => {
      if (frame["type"] !== "direct_message" && frame["type"] !== "group_message") return;
      this.frames++;
      const position = frame["position"] as number;
      if (position <= this.lastPosition) return; // already processed: a replay's overlap
      if (position > this.lastPosition + 1) {
        // A gap: a real client asks again from what it has.
        this.gaps++;
        socket?.send(JSON.stringify({ type: "sync", since: this.lastPosition }));
        return;
      }
      const message = frame["message"] as { id: string; seq: number; groupId?: string };
      this.lastPosition = position;
      if (!this.delivered.has(message.id)) {
        this.delivered.set(message.id, message.seq);
        this.order.push(message.seq);
        this.entries.push({ id: message.id, seq: message.seq, groupId: message.groupId });
      }
      if (position % 10 === 0) socket?.send(JSON.stringify({ type: "ack", upTo: position }));
    });
    return opened.then((opened) => {
      socket = opened;
      return opened;
    });
  }
}

/** Every message of a conversation (or entry of a group's log), from its history, oldest first. */
async function wholeHistory(
  node: TestNode,
  userId: string,
  of: { readonly with: string } | { readonly groupId: string },
): Promise<Json[]> {
  const token = await mintToken({ sub: userId });
  const pages: Json[][] = [];
  let resolvePage: ((frame: Json) => void) | undefined;
  const socket = await open(`${node.wsUrl}?token=${token}`, (frame) => {
    if (frame["type"] === "message_history") resolvePage?.(frame);
  });
  let before: number | undefined;
  for (;;) {
    const page = new Promise<Json>((resolve) => {
      resolvePage = resolve;
    });
    socket.send(
      JSON.stringify({
        type: "get_history",
        ...of,
        limit: 100,
        ...(before ? { before } : {}),
      }),
    );
    const frame = await page;
    const messages = frame["messages"] as Json[];
    pages.unshift(messages);
    if (!frame["hasMore"] || messages.length === 0) break;
    before = messages[0]?.["seq"] as number;
  }
  socket.close();
  return pages.flat();
}

/** Two nodes of one service on `env`, under a key prefix of their own (`prefix` and a suffix). */
async function twoNodes(prefix: string, env: Record<string, string>): Promise<TestNode[]> {
  const shared = {
    ...env,
    REDIS_KEY_PREFIX: `${prefix}${randomUUID().slice(0, 6)}:`,
    RATE_LIMIT_MESSAGES: "1000000",
  };
  return [
    await startNode({ ...shared, NODE_ID: "a" }),
    await startNode({ ...shared, NODE_ID: "b" }),
  ];
}

const backends: [string, () => Promise<TestNode[]>][] = [
  ["memory engine, one node", async () => [await startNode({ RATE_LIMIT_MESSAGES: "1000000" })]],
];
if (redis !== undefined) {
  backends.push([
    "redis engine, two nodes",
    () => twoNodes(redis.prefix, { REDIS_URL: redis.url }),
  ]);
}
if (redisCluster !== undefined) {
  backends.push([
    "redis engine on a Redis Cluster (3 masters, 3 replicas), two nodes",
    () => twoNodes(redisCluster.prefix, { REDIS_CLUSTER_NODES: redisCluster.seeds }),
  ]);
}

describe.each(backends)("chaos (%s)", (name, service) => {
  it("loses no acked message, stores none twice, and keeps every conversation in order", async () => {
    const nodes = await service();
    const seed = 20261126;
    const random = prng(seed);
    const senders = Array.from(
      { length: PAIRS },
      (_, i) => new Sender(`s${i}`, { to: `r${i}` }, nodes, random),
    );
    const receivers = Array.from({ length: PAIRS }, (_, i) => new Receiver(`r${i}`, nodes, random));
    const started = Date.now();
    const receiving = receivers.map((r) => r.run());
    await Promise.all(senders.map((s) => s.run()));
    await Promise.all(receivers.map((r) => r.finish(MESSAGES_PER_SENDER)));
    await Promise.all(receiving);

    let acked = 0;
    let lost = 0;
    let storedTwice = 0;
    let outOfOrder = 0;
    for (let i = 0; i < PAIRS; i++) {
      const sender = senders[i] as Sender;
      const receiver = receivers[i] as Receiver;
      acked += sender.acked.size;
      for (const messageId of sender.acked.values()) if (!receiver.delivered.has(messageId)) lost++;
      for (let k = 1; k < receiver.order.length; k++) {
        if ((receiver.order[k] as number) <= (receiver.order[k - 1] as number)) outOfOrder++;
      }
      const history = await wholeHistory(nodes[0] as TestNode, sender.userId, {
        with: receiver.userId,
      });
      const keys = history.map((m) => m["clientMsgId"]);
      storedTwice += keys.length - new Set(keys).size;
    }
    const cuts =
      senders.reduce((n, s) => n + s.cuts, 0) + receivers.reduce((n, r) => n + r.cuts, 0);
    const frames = receivers.reduce((n, r) => n + r.frames, 0);
    const gaps = receivers.reduce((n, r) => n + r.gaps, 0);
    console.log(
      `[measure] chaos (${name}, seed ${seed}): ${acked} acked, ${cuts} connections cut, ${frames} frames received, ` +
        `lost ${lost}, stored twice ${storedTwice}, out of order ${outOfOrder}, gaps seen ${gaps}, ${Date.now() - started} ms`,
    );
    expect(acked).toBe(PAIRS * MESSAGES_PER_SENDER);
    expect({ lost, storedTwice, outOfOrder }).toEqual({ lost: 0, storedTwice: 0, outOfOrder: 0 });
  }, 90_000);
});

const GROUPS = 2;
const GROUP_SENDERS = 3;
const MESSAGES_PER_GROUP_SENDER = 150;

/**
 * The group chaos also runs with every group entry chunked (docs/groups.md, "Large groups"): a
 * group of 8 is above GROUP_CHUNK_ABOVE=2, and its entries take three scripts of 3 members. An
 * ack then means in the group's log and the sender's inbox, with the rest queued: the nodes
 * write the other inboxes after it (and retries and next entries help), so each receiver's
 * finish() waits (up to 15 s) until its stream has every entry of its slices before the check.
 */
const groupBackends = [...backends];
if (redis !== undefined) {
  groupBackends.push([
    "redis engine, two nodes, chunked fan-out",
    () =>
      twoNodes(redis.prefix, {
        REDIS_URL: redis.url,
        GROUP_CHUNK_ABOVE: "2",
        GROUP_CHUNK_MEMBERS: "3",
      }),
  ]);
}

/**
 * Groups under the same chaos, with membership changing mid-run. Per group: an admin (who adds
 * and removes), senders cut before and after their acks and retrying with the same clientMsgId,
 * members cut at random and resuming with `since` on a random node, one member added after a
 * third of the messages and one removed after two thirds; one member is in every group, so its
 * stream interleaves them. Each member's stream must be exactly its slice of the group's log
 * (from the start, or from its `joined` entry; to the end, or to its `removed` entry): nothing
 * acked lost, nothing twice, every group in seq order, membership entries at their place.
 */
describe.each(groupBackends)("group chaos (%s)", (name, service) => {
  it("loses no acked group message, stores none twice, and gives every member its slice of each log in order", async () => {
    const nodes = await service();
    const seed = 20261201;
    const random = prng(seed);
    const admin = await (nodes[0] as TestNode).connect("admin");
    const shared = new Receiver("everywhere", nodes, random);
    const groups = [] as {
      groupId: string;
      senders: Sender[];
      members: Receiver[];
      late: Receiver;
      gone: Receiver;
    }[];
    for (let g = 0; g < GROUPS; g++) {
      const senders = Array.from({ length: GROUP_SENDERS }, (_, i) => `gs${g}-${i}`);
      const members = [`gm${g}-0`, `gm${g}-1`];
      admin.send({
        type: "create_group",
        name: `chaos ${g}`,
        members: [...senders, ...members, shared.userId, `gone${g}`],
      });
      const { groupId } = (await admin.next("group"))["group"] as { groupId: string };
      groups.push({
        groupId,
        senders: senders.map(
          (id) => new Sender(id, { groupId }, nodes, random, MESSAGES_PER_GROUP_SENDER),
        ),
        members: members.map((id) => new Receiver(id, nodes, random)),
        late: new Receiver(`late${g}`, nodes, random),
        gone: new Receiver(`gone${g}`, nodes, random),
      });
    }
    const receivers = [shared, ...groups.flatMap((g) => [...g.members, g.late, g.gone])];
    const senders = groups.flatMap((g) => g.senders);
    const total = senders.length * MESSAGES_PER_GROUP_SENDER;
    const ackedSoFar = () => senders.reduce((n, s) => n + s.acked.size, 0);

    const started = Date.now();
    const receiving = receivers.map((r) => r.run());
    const sending = Promise.all(senders.map((s) => s.run()));
    // The membership changes, while messages flow: the admin's commands race the senders'.
    const change = async (at: number, type: "add_member" | "remove_member", who: string) => {
      while (ackedSoFar() < at) await new Promise((resolve) => setTimeout(resolve, 10));
      for (let g = 0; g < GROUPS; g++) {
        admin.send({ type, groupId: groups[g]?.groupId, userId: `${who}${g}` });
        await admin.next("group", 10_000);
      }
    };
    await change(total / 3, "add_member", "late");
    await change((2 * total) / 3, "remove_member", "gone");
    await sending;

    // The logs as stored, and each member's slice of them.
    const expected = new Map<Receiver, Map<string, string[]>>();
    const slice = (receiver: Receiver, groupId: string, ids: string[]) => {
      const of = expected.get(receiver) ?? new Map<string, string[]>();
      of.set(groupId, ids);
      expected.set(receiver, of);
    };
    let storedTwice = 0;
    let misplacedEvents = 0;
    const logs = new Map<string, Json[]>();
    for (const group of groups) {
      const log = await wholeHistory(nodes[0] as TestNode, "admin", { groupId: group.groupId });
      logs.set(group.groupId, log);
      const keys = log.flatMap((m) => (m["clientMsgId"] === undefined ? [] : [m["clientMsgId"]]));
      storedTwice += keys.length - new Set(keys).size;
      const seqs = log.map((m) => m["seq"] as number);
      if (seqs.some((seq, i) => seq !== i + 1)) throw new Error("the log has a gap");
      const eventAt = (kind: string, userId: string) =>
        log.findIndex((m) => {
          const event = m["event"] as { kind: string; userId?: string } | undefined;
          return event?.kind === kind && event.userId === userId;
        });
      const joined = eventAt("joined", group.late.userId);
      const removed = eventAt("removed", group.gone.userId);
      // Both changes found, in order, and really mid-run: messages before, between and after.
      const messagesIn = (from: number, to: number) =>
        log.slice(from, to).filter((m) => m["content"] !== undefined).length;
      if (
        joined < 0 ||
        removed < joined ||
        messagesIn(0, joined) === 0 ||
        messagesIn(joined, removed) === 0 ||
        messagesIn(removed, log.length) === 0
      )
        misplacedEvents++;
      const ids = log.map((m) => m["id"] as string);
      for (const member of [...group.members, shared]) slice(member, group.groupId, ids);
      slice(group.late, group.groupId, ids.slice(joined));
      slice(group.gone, group.groupId, ids.slice(0, removed + 1));
      // Every acked message is in the log, at the seq its ack gave.
      for (const sender of group.senders) {
        for (const [clientMsgId, messageId] of sender.acked) {
          const seq = sender.seqs.get(clientMsgId) as number;
          if (log[seq - 1]?.["id"] !== messageId) storedTwice++;
        }
      }
    }
    await Promise.all(
      receivers.map((r) =>
        r.finish([...(expected.get(r)?.values() ?? [])].reduce((n, ids) => n + ids.length, 0)),
      ),
    );
    await Promise.all(receiving);

    let lost = 0;
    let extra = 0;
    let outOfOrder = 0;
    for (const receiver of receivers) {
      for (const [groupId, ids] of expected.get(receiver) ?? []) {
        const got = receiver.entries.filter((entry) => entry.groupId === groupId);
        const seen = new Set(got.map((entry) => entry.id));
        lost += ids.filter((id) => !seen.has(id)).length;
        extra += got.length - ids.filter((id) => seen.has(id)).length;
        for (let k = 1; k < got.length; k++)
          if ((got[k] as Processed).seq <= (got[k - 1] as Processed).seq) outOfOrder++;
        // Exactly the slice, in order: membership entries at their place in the stream.
        if (got.map((entry) => entry.id).join() !== ids.join()) misplacedEvents++;
      }
    }
    const acked = ackedSoFar();
    const cuts =
      senders.reduce((n, s) => n + s.cuts, 0) + receivers.reduce((n, r) => n + r.cuts, 0);
    const frames = receivers.reduce((n, r) => n + r.frames, 0);
    const gaps = receivers.reduce((n, r) => n + r.gaps, 0);
    console.log(
      `[measure] group chaos (${name}, seed ${seed}): ${acked} acked in ${GROUPS} groups, ${cuts} connections cut, ` +
        `${frames} frames received, lost ${lost}, stored twice ${storedTwice}, extra ${extra}, out of order ${outOfOrder}, ` +
        `misplaced ${misplacedEvents}, gaps seen ${gaps}, ${Date.now() - started} ms`,
    );
    expect(acked).toBe(total);
    expect({ lost, storedTwice, extra, outOfOrder, misplacedEvents }).toEqual({
      lost: 0,
      storedTwice: 0,
      extra: 0,
      outOfOrder: 0,
      misplacedEvents: 0,
    });
  }, 120_000);
});
