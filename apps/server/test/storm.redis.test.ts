/**
 * A bounded connection storm in CI: 5,000 clients arrive at two real nodes on one Redis at once,
 * stay through a few heartbeat intervals, and leave at once. Nothing may be dropped, nothing may
 * stay online, no node may take the storm for a Redis outage, and the logs stay short. (The
 * benchmark's `--scenarios storm` runs the same at 100,000; see bench/README.md.)
 */
import { randomUUID } from "node:crypto";
import { mintToken, redisForTests } from "@mrezhen/testkit";
import { Redis } from "ioredis";
import { afterAll, describe, expect, it, onTestFinished } from "vitest";
import WebSocket from "ws";
import { capturedLog, startNode, type TestNode } from "./helpers.js";

const redis = await redisForTests();
afterAll(() => redis?.close());

const CLIENTS = 5000;
/** Connects in flight at once (the listen backlog takes the rest of "at once"). */
const CONCURRENCY = 1000;
const HEARTBEAT_INTERVAL_MS = 1000;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A client that is online once its first answer (a pong) came: registered, subscribed, flushed. */
interface StormClient {
  readonly socket: WebSocket;
  /** The server closed it before the test did. */
  dropped: boolean;
}

function open(url: string): Promise<StormClient> {
  const socket = new WebSocket(url, { perMessageDeflate: false });
  const client: StormClient = { socket, dropped: false };
  return new Promise((resolve, reject) => {
    socket.once("open", () => socket.send('{"type":"ping"}'));
    socket.once("message", () => {
      socket.once("close", () => {
        client.dropped = true;
      });
      resolve(client);
    });
    socket.once("error", reject);
    socket.once("close", (code) => reject(new Error(`closed with ${code} before its pong`)));
  });
}

async function pool<T>(count: number, concurrency: number, make: (i: number) => Promise<T>) {
  const results: T[] = new Array(count);
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      results[i] = await make(i);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return results;
}

describe.skipIf(!redis)("connection storm over two nodes", () => {
  it("5,000 clients arrive and leave at once: 0 dropped, 0 ghosts, no outage, few log lines", async () => {
    if (redis === undefined) return;
    const prefix = `${redis.prefix}${randomUUID().slice(0, 6)}:`;
    const logs = [capturedLog("warn"), capturedLog("warn")];
    const nodes: TestNode[] = [];
    for (const [i, log] of logs.entries()) {
      nodes.push(
        await startNode(
          {
            REDIS_URL: redis.url,
            REDIS_KEY_PREFIX: prefix,
            NODE_ID: `storm-${i}`,
            HEARTBEAT_INTERVAL_MS: String(HEARTBEAT_INTERVAL_MS),
          },
          { logger: log.logger },
        ),
      );
    }
    const raw = new Redis(redis.url);
    onTestFinished(() => void raw.quit());
    // The development-secret warning at start-up is not the storm's.
    for (const log of logs) log.lines.length = 0;
    const tokens = await Promise.all(
      Array.from({ length: CLIENTS }, (_, i) => mintToken({ sub: `storm-user-${i}` })),
    );

    // Health is sampled all along: a node that took the storm for an outage would say so.
    const unhealthy: string[] = [];
    const sampler = setInterval(() => {
      for (const { node } of nodes) {
        const health = node.engine.health();
        if (!health.ok) unhealthy.push(`${node.config.nodeId}: ${health.reason}`);
      }
    }, 50);
    onTestFinished(() => clearInterval(sampler));

    // --- Connect storm.
    const connecting = performance.now();
    const clients = await pool(CLIENTS, CONCURRENCY, (i) =>
      open(`${nodes[i % nodes.length]?.wsUrl}?token=${tokens[i]}&presence=off`),
    );
    const connectMs = performance.now() - connecting;
    onTestFinished(() => {
      for (const client of clients) client.socket.terminate();
    });
    // Held through a few heartbeat passes, every client answering pings by itself.
    await sleep(3 * HEARTBEAT_INTERVAL_MS);
    const dropped = clients.filter((client) => client.dropped).length;
    expect(dropped).toBe(0);
    expect(await raw.scard(`${prefix}presence:online`)).toBe(CLIENTS);

    // --- Disconnect storm: every client goes away at once, without a close handshake.
    const leaving = performance.now();
    for (const client of clients) client.socket.terminate();
    const deadline = performance.now() + 20_000;
    while (nodes.some(({ node }) => node.chat.hub.connections > 0)) {
      if (performance.now() > deadline) throw new Error("the nodes did not see every close");
      await sleep(20);
    }
    const closedMs = performance.now() - leaving;
    await sleep(1000);
    const ghosts = await raw.scard(`${prefix}presence:online`);
    const counts = await raw.hlen(`${prefix}presence:count`);
    clearInterval(sampler);

    const lines = logs.map((log) => log.lines.filter((line) => Number(line["level"]) >= 40));
    console.log(
      `[storm] ${CLIENTS} clients over ${nodes.length} nodes: connected in ${Math.round(connectMs)} ms ` +
        `(${Math.round(CLIENTS / (connectMs / 1000))}/s), all closes seen after ${Math.round(closedMs)} ms; ` +
        `dropped ${dropped}, ghosts ${ghosts}, warn+ lines per node ${lines.map((l) => l.length).join("/")}`,
    );
    expect(ghosts).toBe(0);
    expect(counts).toBe(0);
    expect(unhealthy).toEqual([]);
    for (const nodeLines of lines) {
      expect(nodeLines.filter((line) => /redis connection/.test(String(line["msg"])))).toEqual([]);
      expect(nodeLines.length).toBeLessThanOrEqual(10);
    }
  }, 60_000);
});
