#!/usr/bin/env node
// `pnpm bench`: Mrezhen side by side with its peers. Starts every server at once pinned to one core,
// runs the load generator pinned to the other, prints absolute figures and Mrezhen ÷ peer ratios,
// and stops everything it started (servers, load generator, Redis keys) on success, error or signal.
//
//   node bench/src/run.mjs [--quick] [--json FILE] [--cycles N] [--scenarios a,b]
//                          [--systems mrezhen,ws-ack,ws-min,socket.io] [--rates 2000,10000,20000]
//                          [--server-cpus 0] [--load-cpus 1] [--baseline OTHER/apps/server/dist/main.js]
//                          [--redis redis://127.0.0.1:6379]
//                          [--storm-connections N] [--storm-nodes K] [--storm-workers W]
//                          [--storm-concurrency C] [--storm-heartbeat-ms MS] [--storm-hold-ms MS]
//                          [--scale-connections N] [--scale-nodes K] [--scale-killed-clients M]
//                          [--scale-presence on|contacts|off] [--scale-no-kill] [--redis-cluster]
//                          [--scale-pairs P] [--scale-interval-ms MS] [--scale-before-ms MS]
//                          [--scale-jitter-ms MS]
import { execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { Redis } from "ioredis";
import {
  DEFAULT_SCENARIOS,
  MREZHEN_MAIN,
  parameters,
  SCENARIOS,
  SYSTEMS,
  systemsUnderTest,
  TOPOLOGY,
} from "./plan.mjs";
import { openFilesLimit, parseCpuList } from "./proc.mjs";
import { buildRows, formatReport } from "./report.mjs";
import { pinned, startServer, stopServer } from "./servers.mjs";
import { formatScale, runScale, scaleOpenFiles } from "./storm/scale.mjs";
import { formatStorm, runStorm, stormOpenFiles } from "./storm/storm.mjs";

const DRIVER = fileURLToPath(new URL("./load/driver.mjs", import.meta.url));

function options() {
  const { values } = parseArgs({
    // `pnpm bench -- --quick` may hand the script a literal "--".
    args: process.argv.slice(2).filter((a) => a !== "--"),
    options: {
      quick: { type: "boolean", default: false },
      json: { type: "string" },
      cycles: { type: "string" },
      scenarios: { type: "string", default: DEFAULT_SCENARIOS.join(",") },
      "storm-connections": { type: "string" },
      "storm-nodes": { type: "string" },
      "storm-workers": { type: "string" },
      "storm-concurrency": { type: "string" },
      "storm-heartbeat-ms": { type: "string" },
      "storm-hold-ms": { type: "string" },
      "scale-connections": { type: "string" },
      "scale-nodes": { type: "string" },
      "scale-killed-clients": { type: "string" },
      "scale-presence": { type: "string", default: "contacts" },
      "scale-no-kill": { type: "boolean", default: false },
      "scale-pairs": { type: "string" },
      "scale-interval-ms": { type: "string" },
      "scale-before-ms": { type: "string" },
      "scale-jitter-ms": { type: "string" },
      "redis-cluster": { type: "boolean", default: false },
      systems: { type: "string", default: SYSTEMS.join(",") },
      rates: { type: "string" },
      baseline: { type: "string" },
      "server-cpus": { type: "string", default: "0" },
      "load-cpus": { type: "string", default: "1" },
      redis: { type: "string", default: process.env.BENCH_REDIS_URL ?? "redis://127.0.0.1:6379" },
    },
  });
  const list = (value, known, what) => {
    const items = value.split(",").filter(Boolean);
    for (const item of items)
      if (!known.includes(item)) throw new Error(`unknown ${what} "${item}"`);
    return items;
  };
  const redisHost = new URL(values.redis).hostname;
  if (!/^(127\.\d+\.\d+\.\d+|localhost|\[::1\])$/.test(redisHost)) {
    throw new Error(`the bench only talks to loopback addresses, not ${redisHost}`);
  }
  // Pinning needs two cores; with one, everything shares it and the figures say less.
  const pin = availableParallelism() >= 2;
  if (!pin) console.error("warning: fewer than 2 CPUs, servers and load generator are not pinned");
  return {
    quick: values.quick,
    json: values.json,
    cycles: values.cycles === undefined ? undefined : positiveInteger(values.cycles, "--cycles"),
    scenarios: list(values.scenarios, SCENARIOS, "scenario"),
    rates:
      values.rates === undefined
        ? undefined
        : values.rates.split(",").map((r) => positiveInteger(r, "--rates")),
    systems: list(values.systems, SYSTEMS, "system"),
    serverCpus: pin ? values["server-cpus"] : undefined,
    loadCpus: pin ? values["load-cpus"] : undefined,
    redisUrl: values.redis,
    baseline: values.baseline,
    storm: Object.fromEntries(
      [
        ["connections", "storm-connections"],
        ["nodes", "storm-nodes"],
        ["workers", "storm-workers"],
        ["concurrency", "storm-concurrency"],
        ["heartbeatMs", "storm-heartbeat-ms"],
        ["holdMs", "storm-hold-ms"],
      ]
        .filter(([, flag]) => values[flag] !== undefined)
        .map(([name, flag]) => [name, positiveInteger(values[flag], `--${flag}`)]),
    ),
    scale: {
      ...Object.fromEntries(
        [
          ["connections", "scale-connections"],
          ["nodes", "scale-nodes"],
          ["killedClients", "scale-killed-clients"],
          ["steadyPairs", "scale-pairs"],
          ["steadyIntervalMs", "scale-interval-ms"],
          ["beforeMs", "scale-before-ms"],
          ["reconnectJitterMs", "scale-jitter-ms"],
        ]
          .filter(([, flag]) => values[flag] !== undefined)
          .map(([name, flag]) => [name, positiveInteger(values[flag], `--${flag}`)]),
      ),
      presence: list(values["scale-presence"], ["on", "contacts", "off"], "presence mode")[0],
      kill: !values["scale-no-kill"],
      redisCluster: values["redis-cluster"],
    },
  };
}

/** The scale run must fit: a node's share of the clients within its descriptors, a node to kill. */
function checkScale(p) {
  const { hard } = openFilesLimit();
  const atStart = scaleOpenFiles(p);
  if (atStart > hard) {
    throw new Error(
      `scale: a node would hold up to ${atStart - 256} clients, over the open-files limit ${hard} (minus 256): use more nodes`,
    );
  }
  if (p.scaleNodes < 2) throw new Error("scale: --scale-nodes must be at least 2");
  if (p.scaleKilledClients !== undefined && p.scaleKilledClients > p.scaleConnections)
    throw new Error("scale: --scale-killed-clients is more than --scale-connections");
}

function positiveInteger(text, what) {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) throw new Error(`${what} must be a positive integer`);
  return value;
}

/**
 * Node cannot set its own rlimits, so the open-files soft limit is raised with prlimit(1) on this
 * process before anything is spawned; servers and load generator inherit it. Each of them holds at
 * most one side of every connection (10,000 idle ones, 6,000 pair sockets), plus a few hundred.
 */
function ensureOpenFiles(needed) {
  const { soft, hard } = openFilesLimit();
  if (soft >= needed) return;
  if (hard < needed) {
    throw new Error(
      `open-files limit ${soft}/${hard} is below ${needed}: run \`ulimit -n ${needed}\` as root first`,
    );
  }
  execFileSync("prlimit", [`--pid=${process.pid}`, `--nofile=${needed}:${hard}`]);
}

async function redisProcess(url) {
  const redis = new Redis(url, {
    lazyConnect: true,
    maxRetriesPerRequest: 1,
    connectTimeout: 2000,
  });
  try {
    await redis.connect();
    const pid = Number((await redis.info("server")).match(/process_id:(\d+)/)?.[1]);
    // Its CPU can be read only if it runs on this machine (loopback, but maybe in a container).
    return {
      pid: existsSync(`/proc/${pid}/stat`) ? pid : undefined,
      keys: await redis.dbsize(),
    };
  } catch (error) {
    console.error(
      `warning: Redis at ${url} unreachable (${error.message}): the cluster and storm scenarios are skipped`,
    );
    return undefined;
  } finally {
    redis.disconnect();
  }
}

/** Deletes the run's Mrezhen keys (SCAN + UNLINK, bounded); Socket.IO's adapter keeps none. */
async function deleteKeys(url, prefix) {
  const redis = new Redis(url, { maxRetriesPerRequest: 1, connectTimeout: 2000 });
  try {
    let cursor = "0";
    let deleted = 0;
    for (let round = 0; round < 1_000_000; round++) {
      const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1000);
      if (keys.length > 0) deleted += await redis.unlink(...keys);
      cursor = next;
      if (cursor === "0") break;
    }
    return { deleted, remaining: await redis.dbsize() };
  } finally {
    redis.disconnect();
  }
}

function runLoadGenerator(plan, cpus) {
  const [command, args] = pinned(cpus, [DRIVER]);
  const child = spawn(command, args, { stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const done = new Promise((resolve, reject) => {
    child.on("message", (message) => {
      if (message.type === "progress") console.error(`  ${message.text}`);
      else if (message.type === "result") resolve(message);
      else if (message.type === "error") reject(new Error(`load generator: ${message.message}`));
    });
    child.once("exit", (code, signal) =>
      reject(new Error(`load generator exited (${signal ?? code})`)),
    );
  });
  child.send(plan);
  return { child, done };
}

async function main() {
  const opts = options();
  const runId = `${Date.now().toString(36)}-${randomBytes(3).toString("hex")}`;
  const params = parameters(opts);
  const storm = opts.scenarios.includes("storm");
  const scale = opts.scenarios.includes("scale");
  if (scale) checkScale(params);
  ensureOpenFiles(
    Math.max(
      Math.max(params.idleConnections, 6 * params.pairs) + 1024,
      storm ? stormOpenFiles(params) : 0,
      // Scale: as many as allowed, for the surviving nodes that take the killed one's clients.
      scale ? Math.min(openFilesLimit().hard, 1_048_576) : 0,
    ),
  );

  const needsRedis =
    opts.scenarios.includes("cluster") ||
    opts.scenarios.includes("cluster-fixed") ||
    opts.scenarios.includes("groups") ||
    storm ||
    (scale && !params.redisCluster);
  const redis = needsRedis ? await redisProcess(opts.redisUrl) : undefined;
  if (storm && redis === undefined) throw new Error("the storm scenario needs Redis (--redis)");
  if (scale && !params.redisCluster && redis === undefined)
    throw new Error("the scale scenario needs Redis (--redis, or --redis-cluster)");
  if ((storm || scale) && !existsSync(MREZHEN_MAIN))
    throw new Error(`${MREZHEN_MAIN} is missing: run \`pnpm build\``);
  const stormWorkers = [];
  const atStop = [];
  const wantedTopologies = new Set(opts.scenarios.map((s) => TOPOLOGY[s]));
  if (redis === undefined) wantedTopologies.delete("cluster");
  const specs = systemsUnderTest({
    runId,
    redisUrl: opts.redisUrl,
    baseline: opts.baseline,
  }).filter(
    (s) =>
      (opts.systems.includes(s.system) || s.system === "mrezhen-base") &&
      wantedTopologies.has(s.topology),
  );
  if (specs.some((s) => s.system === "mrezhen") && !existsSync(MREZHEN_MAIN)) {
    throw new Error(
      `${MREZHEN_MAIN} is missing: run \`pnpm build\` (or leave mrezhen out with --systems)`,
    );
  }

  const logDir = mkdtempSync(join(tmpdir(), `mrezhen-bench-${runId}-`));
  const servers = [];
  let loadGenerator;
  let stopping;
  // Idempotent: runs once whether reached by the end of main, an error or a signal.
  const stopEverything = () => {
    stopping ??= (async () => {
      loadGenerator?.kill("SIGKILL");
      for (const worker of stormWorkers) worker.kill("SIGKILL");
      await Promise.all(servers.map(stopServer));
      for (const stop of atStop.splice(0)) {
        try {
          await stop();
        } catch (error) {
          console.error(`warning: clean-up failed (${error.message})`);
        }
      }
      if (
        storm ||
        (scale && !params.redisCluster) ||
        specs.some((s) => s.engine === "redis" && s.system === "mrezhen")
      ) {
        const prefix = `mrezhen-bench-${runId}:`;
        try {
          const { deleted, remaining } = await deleteKeys(opts.redisUrl, prefix);
          console.error(
            `Redis: deleted ${deleted} keys of this run; ${remaining} keys in the database (${redis?.keys} before)`,
          );
        } catch (error) {
          console.error(`warning: could not delete the Redis keys ${prefix}* (${error.message})`);
        }
      }
      const logs = readdirSync(logDir).filter((f) => statSync(join(logDir, f)).size > 0);
      if (logs.length === 0) rmSync(logDir, { recursive: true });
      else console.error(`server output kept in ${logDir}: ${logs.join(", ")}`);
    })();
    return stopping;
  };
  for (const signal of ["SIGINT", "SIGTERM"]) {
    process.once(signal, () => {
      console.error(`\n${signal}: stopping everything`);
      stopEverything().finally(() => process.exit(128 + (signal === "SIGINT" ? 2 : 15)));
    });
  }

  const jwtSecret = randomBytes(32).toString("hex");
  // Production mode, loopback only (Mrezhen binds HOST, 0.0.0.0 by default), warnings only.
  const serverEnv = {
    ...process.env,
    NODE_ENV: "production",
    HOST: "127.0.0.1",
    JWT_SECRET: jwtSecret,
    JWT_ISSUER: "mrezhen",
    LOG_LEVEL: "warn",
  };
  // Only the bench decides which server uses Redis.
  for (const name of ["REDIS_URL", "REDIS_KEY_PREFIX", "NODE_ID", "WS_PORT"])
    delete serverEnv[name];

  try {
    const regular = opts.scenarios.filter((s) => s !== "storm" && s !== "scale");
    if (regular.length > 0) await runRegular();
    if (storm) {
      const row = await runStorm({
        p: params,
        runId,
        redisUrl: opts.redisUrl,
        serverEnv,
        serverCpus: opts.serverCpus,
        loadCpus: opts.loadCpus,
        logDir,
        track: { server: (server) => servers.push(server), worker: (w) => stormWorkers.push(w) },
      });
      console.log(formatStorm(row));
      if (opts.json !== undefined) {
        const path =
          regular.length > 0 ? opts.json.replace(/(\.json)?$/, ".storm.json") : opts.json;
        writeFileSync(path, `${JSON.stringify([row], null, 2)}\n`);
        console.error(`storm row written to ${path}`);
      }
    }
    if (scale) {
      const row = await runScale({
        p: params,
        runId,
        redisUrl: opts.redisUrl,
        serverEnv,
        serverCpus: opts.serverCpus,
        loadCpus: opts.loadCpus,
        logDir,
        hardFdLimit: Math.min(openFilesLimit().hard, 1_048_576),
        track: {
          server: (server) => servers.push(server),
          worker: (w) => stormWorkers.push(w),
          atStop: (stop) => atStop.push(stop),
        },
      });
      console.log(formatScale(row));
      if (opts.json !== undefined) {
        const path =
          regular.length > 0 || storm ? opts.json.replace(/(\.json)?$/, ".scale.json") : opts.json;
        writeFileSync(path, `${JSON.stringify([row], null, 2)}\n`);
        console.error(`scale row written to ${path}`);
      }
    }
  } finally {
    await stopEverything();
  }

  async function runRegular() {
    console.error(
      `starting ${specs.flatMap((s) => s.nodes).length} servers on CPU ${opts.serverCpus ?? "any"}`,
    );
    // All starts are awaited, failed or not, so that none is still starting when we stop them.
    const starts = specs.flatMap((spec) =>
      spec.nodes.map(async (node) => {
        const env = { ...serverEnv, ...node.env };
        const server = await startServer({ ...node, env, cpus: opts.serverCpus, logDir });
        servers.push(server);
        return server;
      }),
    );
    const failed = (await Promise.allSettled(starts)).find((s) => s.status === "rejected");
    if (failed !== undefined) throw failed.reason;
    const systems = specs.map((spec) => {
      const nodes = spec.nodes.map((node) => servers.find((s) => s.name === node.name));
      return {
        ...spec,
        nodes: nodes.map((n) => ({ name: n.name, url: `ws://127.0.0.1:${n.port}` })),
        pids: nodes.map((n) => n.pid),
        redisPid: spec.topology === "cluster" ? redis?.pid : undefined,
        serverCpus: opts.serverCpus === undefined ? undefined : parseCpuList(opts.serverCpus),
      };
    });

    const plan = {
      secret: jwtSecret,
      issuer: "mrezhen",
      systems,
      scenarios: opts.scenarios,
      params,
      // For the groups scenario's SLOWLOG reading: this run's Mrezhen keys.
      redisUrl: opts.redisUrl,
      keyPrefix: `mrezhen-bench-${runId}:`,
    };
    console.error(
      `load generator on CPU ${opts.loadCpus ?? "any"}; scenarios: ${opts.scenarios.join(", ")}`,
    );
    const started = performance.now();
    const generator = runLoadGenerator(plan, opts.loadCpus);
    loadGenerator = generator.child;
    const { records, failures } = await generator.done;
    const rows = buildRows(records, systems);
    console.log(formatReport(rows, { failures }));
    console.error(`measured in ${((performance.now() - started) / 1000).toFixed(0)}s`);
    if (opts.json !== undefined) {
      writeFileSync(opts.json, `${JSON.stringify(rows, null, 2)}\n`);
      console.error(`rows written to ${opts.json}`);
    }
    // The regular servers go before the storm starts its own: it must have the cores to itself.
    await Promise.all(servers.splice(0).map(stopServer));
  }
}

main().catch((error) => {
  console.error(error.message);
  process.exitCode = 1;
});
