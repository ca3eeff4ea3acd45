import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import { freePort } from "./net.js";

/** A Redis Cluster for tests: 3 masters with a replica each, or REDIS_CLUSTER_NODES's. */
export interface TestRedisCluster {
  /** `host:port` of every node (masters and replicas at the start). */
  readonly nodes: readonly string[];
  /** REDIS_CLUSTER_NODES for a server or an engine: every node, comma-separated. */
  readonly seeds: string;
  /** A key prefix of its own for this test file. */
  readonly prefix: string;
  /** Whether this process started the cluster (then it can kill nodes). */
  readonly owned: boolean;
  /** The port of the master that now serves `key`'s slot. */
  masterOf(key: string): Promise<number>;
  /** SIGKILL of one node this process started (a crash); resolves once it is gone. */
  kill(port: number): Promise<void>;
  /**
   * Starts a killed node again with its cluster config: it rejoins, as a replica of whoever
   * took its slots over (so a shard has a replica again after a failover test).
   */
  restart(port: number): Promise<void>;
  /**
   * Resolves once every live node says cluster_state:ok, agrees on who serves each slot, and
   * every replica is in sync with its master.
   */
  waitForOk(timeoutMs?: number): Promise<void>;
  /** Deletes this prefix's keys and stops the nodes it started. */
  close(): Promise<void>;
}

const REDIS_SERVER = "redis-server";
const REDIS_CLI = "redis-cli";

/**
 * A Redis Cluster for tests. With REDIS_CLUSTER_NODES set, that cluster (shared: tests use their
 * own key prefix); otherwise six `redis-server --cluster-enabled yes` on free ports in a temp
 * directory, joined with `redis-cli --cluster create … --cluster-replicas 1` (3 masters, 3
 * replicas; `replicas: 0` for 3 masters alone, e.g. to measure), once every node says
 * cluster_state:ok. No persistence; node timeout 1 s, so that a
 * killed master's replica is promoted within a few seconds.
 *
 * Without redis-server or redis-cli the caller should skip, and this says so loudly; under
 * CI=true a failure to start is an error, never a skip.
 *
 * @example
 * const cluster = await redisClusterForTests();
 * afterAll(() => cluster?.close());
 * describe.skipIf(!cluster)("on Redis Cluster", () => { ... });
 */
export async function redisClusterForTests(
  options: { readonly replicas?: 0 | 1 } = {},
): Promise<TestRedisCluster | undefined> {
  const prefix = `mrezhen-test:${randomUUID().slice(0, 8)}:`;
  const fromEnv = process.env["REDIS_CLUSTER_NODES"]?.trim();
  if (fromEnv) {
    const nodes = fromEnv.split(",").map((node) => node.trim());
    const cluster = new TestCluster(nodes, prefix, new Map(), () => {
      throw new Error("REDIS_CLUSTER_NODES names a cluster this process did not start");
    });
    await cluster.waitForOk();
    return cluster;
  }
  try {
    return await startCluster(prefix, options.replicas ?? 1);
  } catch (error) {
    const why = `no Redis Cluster for tests: REDIS_CLUSTER_NODES is not set and starting one failed (${String(error)})`;
    if (process.env["CI"] === "true") throw new Error(`${why}; under CI=true this is a failure.`);
    console.warn(`\n⚠️  SKIPPING Redis Cluster tests: ${why}.\n`);
    return undefined;
  }
}

async function startCluster(prefix: string, replicas: 0 | 1): Promise<TestRedisCluster> {
  for (const binary of [REDIS_SERVER, REDIS_CLI]) {
    if (spawnSync(binary, ["--version"]).status !== 0) throw new Error(`${binary} is not on PATH`);
  }
  const dir = mkdtempSync(join(tmpdir(), "mrezhen-cluster-"));
  const children = new Map<number, ChildProcess>();
  const busPorts = new Map<number, number>();
  const cleanup = () => {
    for (const child of children.values()) child.kill("SIGKILL");
  };
  // A test run that dies must not leave six servers behind.
  process.once("exit", cleanup);
  try {
    const ports: number[] = [];
    for (let i = 0; i < 3 * (1 + replicas); i++) {
      const port = await freePort();
      // The cluster bus port is port + 10,000 by default, which may be taken or above 65,535.
      const busPort = await freePort();
      children.set(port, await startNode(port, busPort, dir));
      busPorts.set(port, busPort);
      ports.push(port);
    }
    const nodes = ports.map((port) => `127.0.0.1:${port}`);
    const created = spawnSync(
      REDIS_CLI,
      ["--cluster", "create", ...nodes, "--cluster-replicas", String(replicas), "--cluster-yes"],
      { encoding: "utf8", timeout: 60_000 },
    );
    if (created.status !== 0) {
      throw new Error(`redis-cli --cluster create failed: ${created.stdout}${created.stderr}`);
    }
    const restart = async (port: number) => {
      const busPort = busPorts.get(port);
      if (busPort === undefined) throw new Error(`node ${port} was not started by this process`);
      children.set(port, await startNode(port, busPort, dir));
    };
    const cluster = new TestCluster(nodes, prefix, children, restart, () => {
      process.removeListener("exit", cleanup);
      rmSync(dir, { recursive: true, force: true });
    });
    await cluster.waitForOk(30_000);
    return cluster;
  } catch (error) {
    cleanup();
    process.removeListener("exit", cleanup);
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
}

function startNode(port: number, busPort: number, dir: string): Promise<ChildProcess> {
  return spawnRedisServer(
    [
      "--port",
      String(port),
      "--cluster-port",
      String(busPort),
      "--bind",
      "127.0.0.1",
      "--cluster-enabled",
      "yes",
      "--cluster-config-file",
      `nodes-${port}.conf`,
      "--cluster-node-timeout",
      "1000",
      // A replica's first sync right away (default: 5 s later), so a test can kill a master
      // soon after the start and find its replica ready to take over.
      "--repl-diskless-sync-delay",
      "0",
      "--save",
      "",
      "--appendonly",
      "no",
      "--dir",
      dir,
    ],
    10_000,
  );
}

/**
 * Spawns `redis-server` with `args` and resolves with its process once it accepts connections
 * (it says so on stdout); rejects with what it printed when it exits or stays silent past
 * `timeoutMs`. The caller owns the process and kills it.
 */
export function spawnRedisServer(
  args: readonly string[],
  timeoutMs: number,
): Promise<ChildProcess> {
  const child = spawn(REDIS_SERVER, args, { stdio: ["ignore", "pipe", "pipe"] });
  return new Promise<ChildProcess>((resolve, reject) => {
    let output = "";
    const timer = setTimeout(
      () => fail(new Error(`redis-server did not start: ${output}`)),
      timeoutMs,
    );
    const fail = (error: Error) => {
      clearTimeout(timer);
      child.kill("SIGKILL");
      reject(error);
    };
    const onExit = (code: number | null) =>
      fail(new Error(`redis-server exited (${code}): ${output}`));
    child.once("error", fail);
    child.once("exit", onExit);
    child.stdout?.on("data", (chunk: Buffer) => {
      output += chunk.toString();
      if (output.includes("Ready to accept connections")) {
        clearTimeout(timer);
        child.removeListener("exit", onExit);
        child.stdout?.removeAllListeners("data");
        child.stdout?.resume();
        resolve(child);
      }
    });
    child.stderr?.on("data", (chunk: Buffer) => {
      output += chunk.toString();
    });
  });
}

class TestCluster implements TestRedisCluster {
  readonly seeds: string;
  readonly owned: boolean;

  constructor(
    readonly nodes: readonly string[],
    readonly prefix: string,
    private readonly children: Map<number, ChildProcess>,
    readonly restart: (port: number) => Promise<void>,
    private readonly afterClose: () => void = () => {},
  ) {
    this.seeds = nodes.join(",");
    this.owned = children.size > 0;
  }

  /** Runs `action` with a plain connection to each live node (down ones are left out). */
  private async eachNode<T>(action: (client: Redis, port: number) => Promise<T>): Promise<T[]> {
    const results: T[] = [];
    for (const node of this.nodes) {
      const port = Number(node.slice(node.lastIndexOf(":") + 1));
      const child = this.children.get(port);
      if (child !== undefined && (child.exitCode !== null || child.signalCode !== null)) continue;
      const client = new Redis({
        host: node.slice(0, node.lastIndexOf(":")),
        port,
        lazyConnect: true,
        maxRetriesPerRequest: 0,
        retryStrategy: () => null,
        connectTimeout: 2000,
      });
      client.on("error", () => {});
      try {
        await client.connect();
        results.push(await action(client, port));
      } catch {
        // Down or not answering: not part of the live cluster.
      } finally {
        client.disconnect();
      }
    }
    return results;
  }

  async masterOf(key: string): Promise<number> {
    const [port] = await this.eachNode(async (client) => {
      const slot = Number(await client.call("CLUSTER", "KEYSLOT", key));
      const ranges = (await client.call("CLUSTER", "SLOTS")) as [
        number,
        number,
        [string, number],
      ][];
      const range = ranges.find(([low, high]) => slot >= low && slot <= high);
      if (range === undefined) throw new Error(`slot ${slot} is not served`);
      return range[2][1];
    });
    if (port === undefined) throw new Error("no cluster node answers");
    return port;
  }

  async kill(port: number): Promise<void> {
    const child = this.children.get(port);
    if (child === undefined) throw new Error(`node ${port} was not started by this process`);
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    child.kill("SIGKILL");
    await exited;
  }

  async waitForOk(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = "";
    while (Date.now() < deadline) {
      const views = await this.eachNode(async (client) => {
        const info = String(await client.call("CLUSTER", "INFO"));
        const slots = (await client.call("CLUSTER", "SLOTS")) as [
          number,
          number,
          [string, number],
        ][];
        const owners = slots
          .map(([low, high, master]) => `${low}-${high}@${master[1]}`)
          .sort()
          .join(",");
        // A replica that never synced refuses to be promoted: wait for every link to be up.
        const replication = String(await client.call("INFO", "replication"));
        const synced =
          !replication.includes("role:slave") || replication.includes("master_link_status:up");
        return { ok: info.includes("cluster_state:ok") && synced, owners };
      });
      const owners = new Set(views.map((view) => view.owners));
      if (views.length > 0 && views.every((view) => view.ok) && owners.size === 1) return;
      last = JSON.stringify(views);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    throw new Error(`the Redis Cluster is not ok after ${timeoutMs} ms: ${last}`);
  }

  async close(): Promise<void> {
    if (this.owned) {
      await Promise.all([...this.children.keys()].map((port) => this.kill(port)));
      this.afterClose();
      return;
    }
    // A shared cluster: delete this prefix's keys on every master.
    await this.eachNode(async (client) => {
      const role = String(await client.call("ROLE"));
      if (!role.startsWith("master")) return;
      let cursor = "0";
      do {
        const [next, keys] = await client.scan(cursor, "MATCH", `${this.prefix}*`, "COUNT", 500);
        cursor = next;
        for (const key of keys) await client.unlink(key);
      } while (cursor !== "0");
    });
  }
}
