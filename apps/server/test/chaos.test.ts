/**
 * A chaos test in the manner of Jepsen's checkers: senders and receivers on two nodes have their
 * connections cut at random; senders retry with the same clientMsgId, receivers resume with
 * `since`. Every ack and every delivery is recorded, then checked: nothing acked may be lost,
 * nothing stored twice, and every conversation must arrive in order.
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

class Sender {
  /** clientMsgId → messageId of every acked message. */
  readonly acked = new Map<string, string>();
  cuts = 0;

  constructor(
    readonly userId: string,
    readonly to: string,
    private readonly nodes: TestNode[],
    private readonly random: () => number,
  ) {}

  async run(): Promise<void> {
    const token = await mintToken({ sub: this.userId });
    let next = 0;
    while (next < MESSAGES_PER_SENDER) {
      const node = this.nodes[Math.floor(this.random() * this.nodes.length)] as TestNode;
      let waiting: ((frame: Json) => void) | undefined;
      const socket = await open(`${node.wsUrl}?token=${token}`, (frame) => {
        if (frame["type"] === "message_ack" || frame["type"] === "error") waiting?.(frame);
      });
      const closed = new Promise<null>((resolve) => socket.once("close", () => resolve(null)));
      while (next < MESSAGES_PER_SENDER) {
        const clientMsgId = `${this.userId}-${next}`;
        const answer = new Promise<Json>((resolve) => {
          waiting = resolve;
        });
        socket.send(
          JSON.stringify({ type: "direct_message", to: this.to, content: `#${next}`, clientMsgId }),
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

class Receiver {
  /** messageId → seq, for every message processed (after dedupe). */
  readonly delivered = new Map<string, number>();
  /** Seqs in processing order. */
  readonly order: number[] = [];
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
      if (frame["type"] !== "direct_message") return;
      this.frames++;
      const position = frame["position"] as number;
      if (position <= this.lastPosition) return; // already processed: a replay's overlap
      if (position > this.lastPosition + 1) {
        // A gap: a real client asks again from what it has.
        this.gaps++;
        socket?.send(JSON.stringify({ type: "sync", since: this.lastPosition }));
        return;
      }
      const message = frame["message"] as { id: string; seq: number };
      this.lastPosition = position;
      if (!this.delivered.has(message.id)) {
        this.delivered.set(message.id, message.seq);
        this.order.push(message.seq);
      }
      if (position % 10 === 0) socket?.send(JSON.stringify({ type: "ack", upTo: position }));
    });
    return opened.then((opened) => {
      socket = opened;
      return opened;
    });
  }
}

/** Every message of a conversation, from its history, oldest first. */
async function wholeHistory(node: TestNode, userId: string, other: string): Promise<Json[]> {
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
        with: other,
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

const backends: [string, () => Promise<TestNode[]>][] = [
  ["memory engine, one node", async () => [await startNode({ RATE_LIMIT_MESSAGES: "1000000" })]],
];
if (redis !== undefined) {
  backends.push([
    "redis engine, two nodes",
    async () => {
      const env = {
        REDIS_URL: redis.url,
        REDIS_KEY_PREFIX: `${redis.prefix}${randomUUID().slice(0, 6)}:`,
        RATE_LIMIT_MESSAGES: "1000000",
      };
      return [await startNode({ ...env, NODE_ID: "a" }), await startNode({ ...env, NODE_ID: "b" })];
    },
  ]);
}
if (redisCluster !== undefined) {
  backends.push([
    "redis engine on a Redis Cluster (3 masters, 3 replicas), two nodes",
    async () => {
      const env = {
        REDIS_CLUSTER_NODES: redisCluster.seeds,
        REDIS_KEY_PREFIX: `${redisCluster.prefix}${randomUUID().slice(0, 6)}:`,
        RATE_LIMIT_MESSAGES: "1000000",
      };
      return [await startNode({ ...env, NODE_ID: "a" }), await startNode({ ...env, NODE_ID: "b" })];
    },
  ]);
}

describe.each(backends)("chaos (%s)", (name, service) => {
  it("loses no acked message, stores none twice, and keeps every conversation in order", async () => {
    const nodes = await service();
    const seed = 20261126;
    const random = prng(seed);
    const senders = Array.from(
      { length: PAIRS },
      (_, i) => new Sender(`s${i}`, `r${i}`, nodes, random),
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
      const history = await wholeHistory(nodes[0] as TestNode, sender.userId, receiver.userId);
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
