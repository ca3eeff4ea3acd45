import { type ChildProcess, spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { tmpdir } from "node:os";
import { Redis } from "ioredis";
import { eventually, freePort } from "./net.js";
import { spawnRedisServer } from "./redis-cluster.js";

export interface TestRedis {
  /** A URL any client or node can use. */
  readonly url: string;
  /** A key prefix of its own for this test file, so runs and files never see each other's data. */
  readonly prefix: string;
  /** Deletes this prefix's keys and stops a container it started. */
  close(): Promise<void>;
}

/**
 * The environment variable through which vitest's global setup hands its Redis to the test
 * workers (they are separate processes, forked after the setup ran, with its environment).
 */
export const SHARED_TEST_REDIS = "MREZHEN_TEST_REDIS_URL";

/** The Redis a developer most likely has running (Debian's redis-server service listens here). */
export const LOCAL_REDIS_URL = "redis://127.0.0.1:6379";

/**
 * A Redis for tests, the first of:
 * 1. `REDIS_URL` when set (CI sets it): it must answer;
 * 2. the Redis vitest's global setup found or started for the whole run ({@link SHARED_TEST_REDIS});
 * 3. a local Redis on 127.0.0.1:6379;
 * 4. a private `redis-server` on a free port, when the binary is installed (killed when this
 *    process exits);
 * 5. a throwaway container through testcontainers.
 * When none works the caller should skip, and this says so loudly; but under `CI=true` a missing
 * Redis is an error, never a skip.
 *
 * @example
 * const redis = await redisForTests();
 * describe.skipIf(!redis)("redis engine", () => { ... });
 */
export async function redisForTests(): Promise<TestRedis | undefined> {
  const prefix = `mrezhen-test:${randomUUID().slice(0, 8)}:`;
  const fromEnv = process.env["REDIS_URL"] || process.env[SHARED_TEST_REDIS];
  if (fromEnv) {
    await assertReachable(fromEnv);
    return { url: fromEnv, prefix, close: () => deletePrefix(fromEnv, prefix) };
  }
  const local = await findLocalRedis();
  if (local !== undefined) {
    return { url: local.url, prefix, close: () => deletePrefix(local.url, prefix) };
  }
  let containerError: unknown;
  try {
    const { GenericContainer } = await import("testcontainers");
    const container = await new GenericContainer("redis:7-alpine").withExposedPorts(6379).start();
    const url = `redis://${container.getHost()}:${container.getMappedPort(6379)}`;
    return { url, prefix, close: async () => void (await container.stop()) };
  } catch (error) {
    containerError = error;
  }
  const why =
    "no Redis for tests: REDIS_URL is not set, nothing answers on 127.0.0.1:6379, " +
    `redis-server is not installed, and testcontainers failed (${String(containerError)})`;
  if (process.env["CI"] === "true") throw new Error(`${why}; under CI=true this is a failure.`);
  console.warn(
    `\n⚠️  SKIPPING Redis tests: ${why}.\n   Install redis-server, or set REDIS_URL=redis://host:6379.\n`,
  );
  return undefined;
}

/** A Redis found on this machine without Docker; `stop` ends one this call started. */
export interface LocalRedis {
  readonly url: string;
  /** How it was found, for a log line. */
  readonly source: "local" | "private redis-server";
  stop(): Promise<void>;
}

let privateServer: Promise<LocalRedis | undefined> | undefined;

/**
 * A Redis on 127.0.0.1:6379 (`localUrl`) if one answers, else a private `redis-server` (no
 * persistence, on a free loopback port) if the binary is installed, else undefined. The private
 * server is started once per process and killed when the process exits, or by `stop()`.
 */
export async function findLocalRedis(localUrl = LOCAL_REDIS_URL): Promise<LocalRedis | undefined> {
  if (await answers(localUrl)) {
    return { url: localUrl, source: "local", stop: async () => {} };
  }
  if (spawnSync("redis-server", ["--version"]).status !== 0) return undefined;
  privateServer ??= startPrivateRedisServer(() => {
    privateServer = undefined;
  }).catch((error: unknown) => {
    console.warn(`⚠️  a private redis-server did not start: ${String(error)}`);
    return undefined;
  });
  return privateServer;
}

/**
 * A `redis-server` of the caller's own, on a free loopback port, for a test that must see only
 * its own traffic (MONITOR, SLOWLOG, INFO figures) while other test files share the usual Redis.
 * Undefined when the binary is not installed; the caller skips loudly, or fails under CI.
 */
export async function ownRedisServer(): Promise<LocalRedis | undefined> {
  if (spawnSync("redis-server", ["--version"]).status !== 0) {
    const why = "redis-server is not installed";
    if (process.env["CI"] === "true") throw new Error(`${why}; under CI=true this is a failure.`);
    console.warn(`\n⚠️  SKIPPING a test that needs its own redis-server: ${why}.\n`);
    return undefined;
  }
  return startPrivateRedisServer(() => {});
}

async function startPrivateRedisServer(onStop: () => void): Promise<LocalRedis> {
  const port = await freePort();
  const child: ChildProcess = await spawnRedisServer(
    [
      "--port",
      String(port),
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
  // Never outlive the tests, even when they end without running their teardown.
  const kill = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  };
  process.once("exit", kill);
  const url = `redis://127.0.0.1:${port}`;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  return {
    url,
    source: "private redis-server",
    stop: async () => {
      onStop();
      process.removeListener("exit", kill);
      kill();
      await exited;
    },
  };
}

/** Whether a Redis at `url` answers PING, without retries or logged errors. */
async function answers(url: string): Promise<boolean> {
  const client = new Redis(url, {
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: 1000,
  });
  client.on("error", () => {}); // a refused connection is an answer here, not an error
  try {
    await client.connect();
    return (await client.ping()) === "PONG";
  } catch {
    return false;
  } finally {
    client.disconnect();
  }
}

async function assertReachable(url: string): Promise<void> {
  const client = new Redis(url, {
    lazyConnect: true,
    maxRetriesPerRequest: 1,
    retryStrategy: () => null,
  });
  try {
    await client.connect();
    await client.ping();
  } catch (error) {
    throw new Error(`REDIS_URL=${url} is set but Redis does not answer: ${String(error)}`);
  } finally {
    client.disconnect();
  }
}

/** Removes every key under `prefix` (SCAN, never KEYS, so a shared Redis is not blocked). */
export async function deletePrefix(url: string, prefix: string): Promise<void> {
  const client = new Redis(url, { maxRetriesPerRequest: 1 });
  try {
    let cursor = "0";
    do {
      const [next, keys] = await client.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 500);
      cursor = next;
      if (keys.length > 0) await client.unlink(...keys);
    } while (cursor !== "0");
  } finally {
    client.disconnect();
  }
}

/**
 * The commands node `nodeId`'s command connection (client name `mrezhen:<nodeId>:command`)
 * sends to the Redis at `url` while `action` runs, seen by MONITOR. Use a redis-server of the
 * test's own (ownRedisServer): MONITOR on a Redis that other test files load streams all of
 * their commands too, and ioredis' monitor mode loses track of its replies under that flood.
 */
export async function commandsOf(
  url: string,
  nodeId: string,
  action: () => Promise<void>,
): Promise<string[][]> {
  const admin = new Redis(url, { maxRetriesPerRequest: 1 });
  admin.on("error", () => {});
  let monitor: Redis | undefined;
  try {
    const list = String(await admin.client("LIST"));
    const line = list.split("\n").find((l) => l.includes(` name=mrezhen:${nodeId}:command `));
    const address = /\baddr=(\S+)/.exec(line ?? "")?.[1];
    if (address === undefined) throw new Error(`no command connection for ${nodeId}:\n${list}`);
    monitor = await admin.monitor(); // A connection of its own (ioredis duplicates).
    monitor.on("error", () => {});
    const seen: string[][] = [];
    // MONITOR is active once it reports a command of ours (a PING from the admin connection).
    const marker = `marker-${randomUUID()}`;
    let markerSeen = false;
    monitor.on("monitor", (_time: string, args: string[], source: string) => {
      if (source === address) seen.push(args);
      if (args[1] === marker) markerSeen = true;
    });
    await eventually(async () => {
      await admin.ping(marker);
      if (!markerSeen) throw new Error("MONITOR not active yet");
    }, 3000);
    await action();
    await new Promise((resolve) => setTimeout(resolve, 100)); // Let MONITOR catch up.
    return seen;
  } finally {
    monitor?.disconnect();
    admin.disconnect();
  }
}
