/** Helpers of the Redis engine's own tests (not a test file: vitest only runs *.test.ts). */
import { type ChildProcess, spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { connect, createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import type { Engine } from "@mrezhen/engine";
import { deletePrefix, freePort, spawnRedisServer, type TestRedis } from "@mrezhen/testkit";
import { Redis } from "ioredis";
import { afterEach, beforeEach } from "vitest";
import { createRedisEngine, type RedisEngineOptions } from "../src/index.js";

export const RATE = { limit: 1000, windowMs: 60_000 };

/** Engines made by {@link startEngine}; close them all with {@link closeEngines}. */
const engines = new Set<Engine>();

export async function startEngine(
  options: Pick<RedisEngineOptions, "url" | "keyPrefix"> & Partial<RedisEngineOptions>,
): Promise<Engine> {
  const engine = await createRedisEngine({
    nodeId: `node-${randomUUID().slice(0, 8)}`,
    rateLimit: RATE,
    ...options,
  });
  engines.add(engine);
  return engine;
}

export async function closeEngines(): Promise<void> {
  const closing = [...engines].map((engine) => engine.close());
  engines.clear();
  await Promise.all(closing);
}

/** Puts `userId` online on `engine`'s node the way a node does: subscribe, then register. */
export async function goOnline(engine: Engine, userId: string): Promise<void> {
  await engine.broker.subscribe(userId);
  await engine.presence.connect(userId);
}

/** A plain client for looking at what the engine wrote. */
export function rawClient(url: string): Redis {
  const client = new Redis(url, { maxRetriesPerRequest: 1, lazyConnect: false });
  client.on("error", () => {}); // Outage tests kill the server under it.
  return client;
}

/** A redis-server child process of a test's own, for outages. */
export interface RedisServer {
  readonly port: number;
  readonly url: string;
  /** SIGKILL (no shutdown: like a crash or a pulled cable), resolves once the process is gone. */
  kill(): Promise<void>;
}

const children = new Set<ChildProcess>();

/** redis-server from PATH (e.g. /usr/bin/redis-server, or `apt-get install redis-server`). */
const REDIS_SERVER = "redis-server";

/**
 * Whether outage tests can run. Without redis-server they are skipped, loudly; under CI=true a
 * missing redis-server is an error, never a skip (like testkit's redisForTests).
 */
export function haveRedisServer(): boolean {
  const found = spawnSync(REDIS_SERVER, ["--version"]).status === 0;
  if (found) return true;
  const why = "redis-server is not on PATH";
  const { CI } = process.env;
  if (CI === "true") throw new Error(`${why}; under CI=true this is a failure.`);
  console.warn(`\n⚠️  SKIPPING Redis outage tests: ${why}.\n`);
  return false;
}

/** Starts `redis-server` without persistence on `port` (default: a free one), once it accepts connections. */
export async function startRedisServer(port?: number): Promise<RedisServer> {
  const chosen = port ?? (await freePort());
  const child = await spawnRedisServer(
    // A replica's full sync makes its master write an RDB file: into the temp dir, never the repo.
    [
      "--port",
      String(chosen),
      "--bind",
      "127.0.0.1",
      "--save",
      "",
      "--appendonly",
      "no",
      "--dir",
      tmpdir(),
    ],
    5000,
  );
  children.add(child);
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  void exited.then(() => children.delete(child));
  return {
    port: chosen,
    url: `redis://127.0.0.1:${chosen}`,
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await exited;
    },
  };
}

/** Kills every redis-server a test started and left running (afterEach/afterAll, even on failure). */
export async function killRedisServers(): Promise<void> {
  await Promise.all(
    [...children].map(
      (child) =>
        new Promise<void>((resolve) => {
          if (child.exitCode !== null || child.signalCode !== null) return resolve();
          child.once("exit", () => resolve());
          child.kill("SIGKILL");
        }),
    ),
  );
}

/** Milliseconds since `start` (a Date.now() value), for the figures the tests print. */
export function since(start: number): number {
  return Date.now() - start;
}

/** A TCP proxy in front of a Redis, to cut one node off while the others keep their link. */
export interface TcpProxy {
  readonly url: string;
  /** Drops every proxied connection and refuses new ones (RST-like: the node notices at once). */
  cut(): void;
  /** Keeps connections open but forwards nothing (a silent partition: nothing tells the node). */
  blackhole(): void;
  /** Forwards again (new connections; dropped ones stay dropped). */
  heal(): void;
  /**
   * Drops, unforwarded, the next connection whose client sends bytes containing `text` (for
   * example a command in RESP: `$9\r\nsubscribe\r\n`). Resolves when it happened.
   */
  dropNextSending(text: string): Promise<void>;
  close(): Promise<void>;
}

export async function startProxy(targetPort: number): Promise<TcpProxy> {
  let mode: "pass" | "cut" | "blackhole" = "pass";
  const sockets = new Set<Socket>();
  let trap: { text: string; sprung: () => void } | undefined;
  const server = createServer((client) => {
    sockets.add(client);
    client.on("close", () => sockets.delete(client));
    client.on("error", () => {});
    if (mode === "cut") {
      client.destroy();
      return;
    }
    const upstream = connect(targetPort, "127.0.0.1");
    sockets.add(upstream);
    upstream.on("close", () => {
      sockets.delete(upstream);
      client.destroy();
    });
    upstream.on("error", () => {});
    client.on("close", () => upstream.destroy());
    client.on("data", (chunk: Buffer) => {
      if (trap !== undefined && chunk.includes(trap.text)) {
        const { sprung } = trap;
        trap = undefined;
        client.destroy();
        upstream.destroy();
        sprung();
        return;
      }
      if (mode === "pass") upstream.write(chunk);
    });
    upstream.on("data", (chunk) => {
      if (mode === "pass") client.write(chunk);
    });
  });
  const port = await new Promise<number>((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      resolve(typeof address === "object" && address ? address.port : 0);
    });
  });
  return {
    url: `redis://127.0.0.1:${port}`,
    cut() {
      mode = "cut";
      for (const socket of sockets) socket.destroy();
    },
    blackhole() {
      mode = "blackhole";
    },
    heal() {
      mode = "pass";
    },
    dropNextSending: (text) =>
      new Promise<void>((sprung) => {
        trap = { text, sprung };
      }),
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** What {@link freshPrefixEachTest} gives each test. */
export interface PrefixedRedis {
  readonly url: string;
  /** A key prefix of this test's own, under the file's. */
  readonly keyPrefix: string;
  /** A plain client, for looking at keys. */
  readonly raw: Redis;
}

/**
 * Gives every test of the calling `describe` its own key prefix and a raw client; after each
 * test, closes the engines it started, the client, and deletes the prefix's keys.
 */
export function freshPrefixEachTest(redis: TestRedis | undefined): PrefixedRedis {
  const url = redis?.url ?? "";
  const current = { url, keyPrefix: "", raw: undefined as Redis | undefined };
  beforeEach(() => {
    current.keyPrefix = `${redis?.prefix}${randomUUID().slice(0, 8)}:`;
    current.raw = rawClient(url);
  });
  afterEach(async () => {
    await closeEngines();
    current.raw?.disconnect();
    await deletePrefix(url, current.keyPrefix);
  });
  return {
    url,
    get keyPrefix() {
      return current.keyPrefix;
    },
    get raw() {
      if (current.raw === undefined) throw new Error("only inside a test");
      return current.raw;
    },
  };
}
