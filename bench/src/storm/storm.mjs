// The storm scenario: N clients arrive at K Mrezhen nodes on one Redis within seconds, stay
// through heartbeat passes, and leave within seconds. It measures what operators saw go wrong at
// 100,000 users: the connect rate, connections the servers dropped, Redis' latency while it
// works through the storm, presence left online after everyone left (ghosts), outages declared
// by nodes, and how many warning lines the nodes wrote. Run by run.mjs with `--scenarios storm`.
import { fork } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Redis } from "ioredis";
import { MREZHEN_MAIN } from "../plan.mjs";
import { cpuUs } from "../proc.mjs";
import { pinned, startServer } from "../servers.mjs";

const WORKER = fileURLToPath(new URL("./worker.mjs", import.meta.url));
/** Connections per client process: well under the 20,000 descriptors one process may hold. */
export const PER_WORKER = 10_000;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Descriptors a storm needs in one process: a node's share of the clients, plus a few for Redis,
 * the listener and logs (a client process holds at most PER_WORKER).
 */
export function stormOpenFiles(p) {
  return Math.max(Math.ceil(p.stormConnections / p.stormNodes), PER_WORKER) + 256;
}

function lines(path) {
  try {
    return readFileSync(path, "utf8").split("\n").filter(Boolean);
  } catch {
    return [];
  }
}

/** A client pinging Redis every 10 ms on its own connection: what any client waited meanwhile. */
function latencyProbe(url) {
  const redis = new Redis(url, { maxRetriesPerRequest: 1 });
  redis.on("error", () => {});
  let samples = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      const at = performance.now();
      try {
        await redis.ping();
        samples.push(performance.now() - at);
      } catch {
        samples.push(Number.POSITIVE_INFINITY);
      }
      await sleep(10);
    }
  })();
  return {
    /** Max and p99 of the PING round trips since the last call (ms). */
    take() {
      const sorted = samples.sort((a, b) => a - b);
      samples = [];
      const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
      return { pingP99Ms: round(at(0.99)), pingMaxMs: round(at(1)) };
    },
    async stop() {
      running = false;
      await loop;
      redis.disconnect();
    },
  };
}

/** A client process (worker.mjs), pinned to `cpus` (a taskset list) unless undefined. */
export function forkWorker(cpus) {
  const [command, args] = pinned(cpus, [WORKER]);
  return command === process.execPath
    ? fork(WORKER, [], { stdio: ["ignore", "inherit", "inherit", "ipc"] })
    : fork(args.at(-1), [], {
        execPath: command,
        execArgv: args.slice(0, -1),
        stdio: ["ignore", "inherit", "inherit", "ipc"],
      });
}

/** Sends `message` to a client process; resolves with its first answer of type `reply`. */
export function askWorker(child, message, reply) {
  return new Promise((resolve, reject) => {
    const onMessage = (m) => {
      if (m.type === reply || m.type === "error") child.off("message", onMessage);
      if (m.type === reply) resolve(m);
      else if (m.type === "error") reject(new Error(`storm worker: ${m.message}`));
    };
    child.on("message", onMessage);
    child.send(message);
  });
}

export const round = (v, digits = 1) => Math.round(v * 10 ** digits) / 10 ** digits;

export async function redisCpuUs(redis) {
  const info = await redis.info("cpu");
  const get = (name) => Number(info.match(new RegExp(`^${name}:([\\d.]+)`, "m"))?.[1] ?? 0);
  return (get("used_cpu_sys") + get("used_cpu_user")) * 1e6;
}

async function commandsProcessed(redis) {
  const info = await redis.info("stats");
  return Number(info.match(/^total_commands_processed:(\d+)/m)?.[1] ?? 0);
}

/** SLOWLOG entries newer than `afterId` from the storm nodes' connections: the slowest (µs). */
async function slowest(redis, afterId, prefix) {
  const entries = await redis.slowlog("GET", 10_000);
  let maxUs = 0;
  let count = 0;
  for (const [id, , micros, , , name] of entries) {
    if (id <= afterId || !String(name).startsWith(prefix)) continue;
    count++;
    maxUs = Math.max(maxUs, micros);
  }
  return { slowlogMaxMs: round(maxUs / 1000), slowlogEntries: count };
}

/** LATENCY LATEST events recorded since `since` (s): the worst, in ms. */
async function latencyEvents(redis, since) {
  const events = await redis.call("LATENCY", "LATEST");
  let worst = 0;
  for (const [, at, latest] of events) if (at >= since) worst = Math.max(worst, latest);
  return worst;
}

/**
 * Runs the storm; returns its result row. `start` starts a server (run.mjs keeps track of it for
 * clean-up); `track` is handed each worker process likewise.
 */
export async function runStorm({
  p,
  runId,
  redisUrl,
  serverEnv,
  serverCpus,
  loadCpus,
  logDir,
  track,
}) {
  const prefix = `mrezhen-bench-${runId}:`;
  const n = p.stormConnections;
  const k = p.stormNodes;
  const progress = (text) => console.error(`  storm: ${text}`);
  const nodes = [];
  for (let i = 0; i < k; i++) {
    const env = {
      ...serverEnv,
      REDIS_URL: redisUrl,
      REDIS_KEY_PREFIX: prefix,
      NODE_ID: `storm-${i}`,
      HEARTBEAT_INTERVAL_MS: String(p.stormHeartbeatMs),
      RATE_LIMIT_MESSAGES: "1000000000",
    };
    nodes.push(
      await startServer({
        name: `storm-${i}`,
        script: MREZHEN_MAIN,
        env,
        cpus: serverCpus,
        logDir,
      }),
    );
    track.server(nodes.at(-1));
  }
  const urls = nodes.map((node) => `ws://127.0.0.1:${node.port}`);
  const workerCount = Math.max(p.stormWorkers, Math.ceil(n / PER_WORKER));
  const workers = [];
  for (let w = 0; w < workerCount; w++) {
    const first = Math.floor((n * w) / workerCount);
    const count = Math.floor((n * (w + 1)) / workerCount) - first;
    const child = forkWorker(loadCpus);
    track.worker(child);
    workers.push({ child, first, count, address: `127.0.0.${2 + (w % 250)}` });
  }
  const ask = (worker, message, reply) => askWorker(worker.child, message, reply);
  const all = (message, reply) => Promise.all(workers.map((w) => ask(w, message, reply)));

  progress(`${workerCount} client processes minting ${n} tokens`);
  await Promise.all(
    workers.map((w) =>
      ask(
        w,
        {
          type: "setup",
          secret: serverEnv.JWT_SECRET,
          issuer: serverEnv.JWT_ISSUER,
          urls,
          first: w.first,
          count: w.count,
          address: w.address,
          concurrency: p.stormConcurrency,
        },
        "ready",
      ),
    ),
  );

  const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1 });
  const probe = latencyProbe(redisUrl);
  const [, threshold] = await redis.config("GET", "latency-monitor-threshold");
  if (Number(threshold) === 0) await redis.config("SET", "latency-monitor-threshold", "10");
  const slowlogFrom = (await redis.slowlog("GET", 1))[0]?.[0] ?? -1;
  const logLines = () => nodes.map((node) => lines(node.logPath).length);
  const nodeCpu = () => nodes.reduce((sum, node) => sum + cpuUs(node.pid), 0);
  const row = { kind: "storm", connections: n, nodes: k, clientProcesses: workerCount };
  try {
    // --- Connect storm.
    const linesBefore = logLines();
    const cpu0 = [nodeCpu(), await redisCpuUs(redis), await commandsProcessed(redis)];
    probe.take();
    const t0 = Date.now() / 1000;
    progress(`connect: ${n} clients to ${k} nodes at once (${p.stormConcurrency} in flight each)`);
    const connected = await all({ type: "connect" }, "connected");
    const connectMs = Math.max(...connected.map((c) => c.ms));
    const cpu1 = [nodeCpu(), await redisCpuUs(redis), await commandsProcessed(redis)];
    const acked = connected.reduce((sum, c) => sum + c.acked, 0);
    Object.assign(row, {
      acked,
      connectFailed: connected.reduce((sum, c) => sum + c.failed, 0),
      connectLastError: connected.find((c) => c.lastError)?.lastError,
      connectSeconds: round(connectMs / 1000),
      connectsPerSec: Math.round(acked / (connectMs / 1000)),
      nodeCpuUsPerConnect: Math.round((cpu1[0] - cpu0[0]) / acked),
      redisCpuUsPerConnect: round((cpu1[1] - cpu0[1]) / acked),
      redisCommandsPerConnect: round((cpu1[2] - cpu0[2]) / acked, 2),
      connect: probe.take(),
    });
    progress(`connect: ${acked} online in ${row.connectSeconds}s (${row.connectsPerSec}/s)`);

    // --- Hold, through heartbeat passes. What the nodes spend holding idle connections (the
    // heartbeat, the token sweep) is CPU a storm cannot have: measured over the hold.
    const holdCpu0 = nodeCpu();
    const holdT0 = performance.now();
    await sleep(p.stormHoldMs);
    row.holdNodeCpuPercent = round(
      (100 * (nodeCpu() - holdCpu0)) / ((performance.now() - holdT0) * 1000),
      2,
    );
    const counted = await all({ type: "count" }, "counted");
    row.droppedDuringConnectAndHold = counted.reduce((sum, c) => sum + c.dropped, 0);
    row.onlineInRedis = await redis.scard(`${prefix}presence:online`);
    const linesAfterConnect = logLines();
    row.hold = probe.take();

    // --- Disconnect storm.
    const cpu2 = [nodeCpu(), await redisCpuUs(redis)];
    progress(`leave: ${n} clients at once`);
    const left = await all({ type: "leave" }, "left");
    const leaveMs = Math.max(...left.map((l) => l.ms));
    await sleep(1000);
    row.ghostsAfter1s = await redis.scard(`${prefix}presence:online`);
    const leftAt = performance.now();
    while (
      (await redis.scard(`${prefix}presence:online`)) > 0 &&
      performance.now() - leftAt < 60_000
    )
      await sleep(100);
    row.ghostsAfter60s = await redis.scard(`${prefix}presence:online`);
    row.presenceEmptyAfterSeconds = round(1 + (performance.now() - leftAt) / 1000);
    await sleep(1500); // the nodes' summary lines come at most a second after what they count
    const cpu3 = [nodeCpu(), await redisCpuUs(redis)];
    Object.assign(row, {
      leaveSeconds: round(leaveMs / 1000),
      nodeCpuUsPerDisconnect: Math.round((cpu3[0] - cpu2[0]) / acked),
      redisCpuUsPerDisconnect: round((cpu3[1] - cpu2[1]) / acked),
      leave: probe.take(),
    });
    const linesEnd = logLines();
    const logs = nodes.flatMap((node) => lines(node.logPath));
    Object.assign(row, {
      ...(await slowest(redis, slowlogFrom, "mrezhen:storm-")),
      redisLatencyEventMaxMs: await latencyEvents(redis, t0),
      warnLinesPerNodeConnect: linesAfterConnect.map((l, i) => l - (linesBefore[i] ?? 0)),
      warnLinesPerNodeLeave: linesEnd.map((l, i) => l - (linesAfterConnect[i] ?? 0)),
      outagesDeclared: logs.filter((line) => line.includes("redis connection lost")).length,
      heartbeatClosures: logs
        .filter((line) => line.includes('"heartbeat closed'))
        .reduce((sum, line) => sum + (Number(JSON.parse(line).count) || 0), 0),
    });
    return row;
  } finally {
    if (Number(threshold) === 0) await redis.config("SET", "latency-monitor-threshold", "0");
    await probe.stop();
    redis.disconnect();
  }
}

/** The storm row as a few lines of text. */
export function formatStorm(row) {
  const perNode = (list) => list.join("/");
  return [
    `storm: ${row.connections.toLocaleString("en-US")} connections over ${row.nodes} nodes (${row.clientProcesses} client processes)`,
    `  connect: ${row.acked} online in ${row.connectSeconds} s = ${row.connectsPerSec}/s; failed ${row.connectFailed}${row.connectLastError ? ` (${row.connectLastError})` : ""}`,
    `           per connect: node CPU ${row.nodeCpuUsPerConnect} µs, Redis CPU ${row.redisCpuUsPerConnect} µs, Redis commands ${row.redisCommandsPerConnect}`,
    `           Redis PING p99 ${row.connect.pingP99Ms} ms, max ${row.connect.pingMaxMs} ms`,
    `  hold:    dropped ${row.droppedDuringConnectAndHold}; online in Redis ${row.onlineInRedis}; PING max ${row.hold.pingMaxMs} ms; nodes' CPU ${row.holdNodeCpuPercent} % of a core (all nodes)`,
    `  leave:   in ${row.leaveSeconds} s; ghosts 1 s after ${row.ghostsAfter1s}, presence empty after ${row.presenceEmptyAfterSeconds} s (${row.ghostsAfter60s} left at 60 s)`,
    `           per disconnect: node CPU ${row.nodeCpuUsPerDisconnect} µs, Redis CPU ${row.redisCpuUsPerDisconnect} µs; PING p99 ${row.leave.pingP99Ms} ms, max ${row.leave.pingMaxMs} ms`,
    `  Redis:   SLOWLOG max ${row.slowlogMaxMs} ms (${row.slowlogEntries} entries from the nodes), LATENCY max ${row.redisLatencyEventMaxMs} ms`,
    `  nodes:   outages declared ${row.outagesDeclared}; heartbeat closures ${row.heartbeatClosures}; warning lines per node: connect ${perNode(row.warnLinesPerNodeConnect)}, leave ${perNode(row.warnLinesPerNodeLeave)}`,
  ].join("\n");
}
