// The scale scenario: N idle authenticated connections over K Mrezhen nodes on one Redis (or, with
// --redis-cluster, on a local Redis Cluster the bench starts as the testkit does), then a
// reconnect storm: one node is killed (SIGKILL) and its clients reconnect to the others while a
// few pairs of other users exchange DMs. It measures what a connection costs at rest (node RSS
// above the nodes' base after a full GC, Redis used_memory per online user), the connect rate, and
// what losing a node costs: the time until every client of the killed node is back (reconnected,
// one DM sent and acked) and the other users' message latency during the storm against before.
// Run by run.mjs with `--scenarios scale`; the clients are the storm's client processes
// (worker.mjs).
import { Cluster, Redis } from "ioredis";
import { MREZHEN_MAIN } from "../plan.mjs";
import { cpuUs, rssKiB } from "../proc.mjs";
import { startServer } from "../servers.mjs";
import { askWorker, forkWorker, PER_WORKER, redisCpuUs, round } from "./storm.mjs";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
/** Descriptors a node needs besides its clients' sockets (Redis, listener, logs, libuv). */
const NODE_SPARE_FDS = 256;

/** The largest number of clients one node holds in a scale run: at the start, and after the kill. */
export function scaleNodeShare(p) {
  const n = p.scaleConnections;
  const k = p.scaleNodes;
  const victims = p.scaleKilledClients ?? Math.ceil(n / k);
  const atStart = Math.max(victims, Math.ceil((n - victims) / (k - 1)));
  return { atStart, afterKill: Math.ceil(n / (k - 1)) };
}

/** Descriptors one process needs for the scale run's start (the kill is skipped if it does not fit). */
export function scaleOpenFiles(p) {
  return Math.max(scaleNodeShare(p).atStart, PER_WORKER) + NODE_SPARE_FDS;
}

/** Redis used_memory and used_memory_dataset (bytes), summed over the masters in cluster mode. */
async function redisMemory(masters) {
  let used = 0;
  let dataset = 0;
  for (const client of masters) {
    const info = await client.info("memory");
    used += Number(info.match(/^used_memory:(\d+)/m)?.[1] ?? 0);
    dataset += Number(info.match(/^used_memory_dataset:(\d+)/m)?.[1] ?? 0);
  }
  return { used, dataset };
}

/** Full GC in every node (SIGUSR2 → gc() in server-hook.mjs, twice), then their summed RSS (KiB). */
async function rssAfterGc(nodes) {
  for (let i = 0; i < 2; i++) {
    for (const node of nodes) process.kill(node.pid, "SIGUSR2");
    await sleep(500);
  }
  await sleep(500);
  return nodes.reduce((sum, node) => sum + rssKiB(node.pid), 0);
}

/**
 * Runs the scale scenario; returns its row. `track.server`, `track.worker` and `track.atStop`
 * hand run.mjs what it must stop or clean on the way out.
 */
export async function runScale({
  p,
  runId,
  redisUrl,
  serverEnv,
  serverCpus,
  loadCpus,
  logDir,
  hardFdLimit,
  track,
}) {
  const prefix = `mrezhen-bench-${runId}:`;
  const n = p.scaleConnections;
  const k = p.scaleNodes;
  const progress = (text) => console.error(`  scale: ${text}`);
  const row = {
    kind: "scale",
    connections: n,
    nodes: k,
    presence: p.scalePresence,
    redis: p.redisCluster ? "cluster (3 masters + 3 replicas)" : "standalone",
  };

  // --- Redis: the given one, or a local Redis Cluster started as the testkit does.
  let where;
  let masters;
  let online;
  if (p.redisCluster) {
    progress("starting a local Redis Cluster (3 masters, 3 replicas)");
    const { redisClusterForTests } = await import("../../../packages/testkit/dist/index.js");
    const cluster = await redisClusterForTests({ replicas: 1 });
    if (cluster === undefined) throw new Error("no Redis Cluster (see the warning above)");
    track.atStop(() => cluster.close());
    where = { REDIS_CLUSTER_NODES: cluster.seeds, REDIS_URL: "" };
    masters = [];
    for (const node of cluster.nodes) {
      const client = new Redis(`redis://${node}`, { maxRetriesPerRequest: 1 });
      if (String(await client.call("ROLE")).startsWith("master")) masters.push(client);
      else client.disconnect();
    }
    const clusterClient = new Cluster(
      cluster.nodes.map((node) => ({ host: "127.0.0.1", port: Number(node.split(":")[1]) })),
    );
    track.atStop(() => clusterClient.disconnect());
    online = () => clusterClient.scard(`${prefix}{p}presence:online`);
  } else {
    where = { REDIS_URL: redisUrl };
    const client = new Redis(redisUrl, { maxRetriesPerRequest: 1 });
    masters = [client];
    online = () => client.scard(`${prefix}presence:online`);
  }
  track.atStop(() => {
    for (const client of masters) client.disconnect();
  });

  // --- Nodes.
  const nodes = [];
  for (let i = 0; i < k; i++) {
    const env = {
      ...serverEnv,
      ...where,
      REDIS_KEY_PREFIX: prefix,
      NODE_ID: `scale-${i}`,
      RATE_LIMIT_MESSAGES: "1000000000",
      RATE_LIMIT_WINDOW_MS: "60000",
    };
    const node = await startServer({
      name: `scale-${i}`,
      script: MREZHEN_MAIN,
      env,
      cpus: serverCpus,
      logDir,
    });
    track.server(node);
    nodes.push(node);
  }
  const urls = nodes.map((node) => `ws://127.0.0.1:${node.port}`);
  await sleep(1000);
  const rssBase = await rssAfterGc(nodes);
  const memBase = await redisMemory(masters);

  // --- Client processes, as in the storm; the first node gets `victims` clients.
  const share = scaleNodeShare(p);
  const victims = p.scaleKilledClients;
  const workerCount = Math.max(p.stormWorkers, Math.ceil(n / PER_WORKER));
  const workers = [];
  for (let w = 0; w < workerCount; w++) {
    const first = Math.floor((n * w) / workerCount);
    const count = Math.floor((n * (w + 1)) / workerCount) - first;
    const child = forkWorker(loadCpus);
    track.worker(child);
    const mine =
      victims === undefined
        ? undefined
        : Math.floor((victims * (w + 1)) / workerCount) - Math.floor((victims * w) / workerCount);
    workers.push({ child, first, count, address: `127.0.0.${2 + (w % 250)}`, victims: mine });
  }
  const all = (message, reply) =>
    Promise.all(workers.map((w) => askWorker(w.child, message, reply)));
  progress(`${workerCount} client processes minting ${n} tokens`);
  await Promise.all(
    workers.map((w) =>
      askWorker(
        w.child,
        {
          type: "setup",
          secret: serverEnv.JWT_SECRET,
          issuer: serverEnv.JWT_ISSUER,
          urls,
          first: w.first,
          count: w.count,
          address: w.address,
          concurrency: p.stormConcurrency,
          presence: p.scalePresence,
          victims: w.victims,
          reconnect: true,
          connectAttempts: 5,
          reconnectJitterMs: p.scaleReconnectJitterMs,
        },
        "ready",
      ),
    ),
  );

  // --- Connect.
  const nodeCpu = (list) => list.reduce((sum, node) => sum + cpuUs(node.pid), 0);
  const redisCpu = async () => {
    let total = 0;
    for (const client of masters) total += await redisCpuUs(client);
    return total;
  };
  const cpu0 = [nodeCpu(nodes), await redisCpu()];
  progress(`connect: ${n} clients (presence=${p.scalePresence}) to ${k} nodes`);
  const connected = await all({ type: "connect" }, "connected");
  const connectMs = Math.max(...connected.map((c) => c.ms));
  const cpu1 = [nodeCpu(nodes), await redisCpu()];
  const acked = connected.reduce((sum, c) => sum + c.acked, 0);
  Object.assign(row, {
    acked,
    connectFailed: connected.reduce((sum, c) => sum + c.failed, 0),
    connectRetries: connected.reduce((sum, c) => sum + c.retried, 0),
    connectLastError: connected.find((c) => c.lastError)?.lastError || undefined,
    connectSeconds: round(connectMs / 1000),
    connectsPerSec: Math.round(acked / (connectMs / 1000)),
    nodeCpuUsPerConnect: Math.round((cpu1[0] - cpu0[0]) / acked),
    redisCpuUsPerConnect: round((cpu1[1] - cpu0[1]) / acked),
  });
  progress(`connect: ${acked} online in ${row.connectSeconds}s (${row.connectsPerSec}/s)`);

  // --- At rest: node RSS above the base after GC, Redis memory per online user.
  await sleep(3000);
  const rssIdle = await rssAfterGc(nodes);
  const memIdle = await redisMemory(masters);
  const onlineUsers = await online();
  const perNode = (await all({ type: "count" }, "counted")).reduce((sums, c) => {
    for (const [i, url] of urls.entries()) sums[i] += c.perUrl[url] ?? 0;
    return sums;
  }, new Array(k).fill(0));
  Object.assign(row, {
    clientsPerNode: perNode,
    onlineInRedis: onlineUsers,
    nodeRssBaseMiB: round(rssBase / 1024),
    nodeRssIdleMiB: round(rssIdle / 1024),
    nodeKiBPerConn: round((rssIdle - rssBase) / acked, 2),
    redisUsedMemoryBeforeMiB: round(memBase.used / 2 ** 20),
    redisUsedMemoryAfterMiB: round(memIdle.used / 2 ** 20),
    redisBytesPerOnlineUser: Math.round((memIdle.used - memBase.used) / onlineUsers),
    redisDatasetBytesPerOnlineUser: Math.round((memIdle.dataset - memBase.dataset) / onlineUsers),
  });
  progress(
    `at rest: ${row.nodeKiBPerConn} KiB node RSS and ${row.redisBytesPerOnlineUser} B of Redis per connection`,
  );

  // --- Reconnect storm, if the survivors can hold the killed node's clients.
  const capacity = hardFdLimit - NODE_SPARE_FDS;
  if (p.scaleKill && k >= 2 && share.afterKill > capacity) {
    row.stormSkipped = `after the kill each surviving node would hold ${share.afterKill} clients, over the ${capacity} its descriptors allow (use --scale-killed-clients or more nodes)`;
    progress(`reconnect storm skipped: ${row.stormSkipped}`);
  } else if (p.scaleKill && k >= 2) {
    await reconnectStorm();
  }

  // --- Leave.
  progress("leave: every client at once");
  await all({ type: "leave" }, "left");
  return row;

  async function reconnectStorm() {
    const prober = forkWorker(undefined);
    track.worker(prober);
    await askWorker(
      prober,
      {
        type: "setup",
        secret: serverEnv.JWT_SECRET,
        issuer: serverEnv.JWT_ISSUER,
        urls,
        first: 0,
        count: 0,
        address: `127.0.0.${2 + (workerCount % 250)}`,
        concurrency: 10,
        presence: p.scalePresence,
      },
      "ready",
    );
    // Pairs on the surviving nodes, sender and receiver on different ones when there are two.
    const survivors = urls.slice(1);
    const pairs = Array.from({ length: p.scaleSteadyPairs }, (_, i) => ({
      sender: `steady-s${i}`,
      receiver: `steady-r${i}`,
      senderUrl: survivors[i % survivors.length],
      receiverUrl: survivors[(i + 1) % survivors.length],
    }));
    await askWorker(
      prober,
      { type: "steady", pairs, intervalMs: p.scaleSteadyIntervalMs },
      "steady-ready",
    );
    const take = () => askWorker(prober, { type: "steady-take" }, "steady-taken");
    await sleep(2000);
    await take(); // warm-up, dropped
    await sleep(p.scaleBeforeMs);
    const before = await take();
    const onVictim = perNode[0];
    const survivorNodes = nodes.slice(1);
    const cpu2 = [nodeCpu(survivorNodes), await redisCpu()];
    progress(
      `storm: kill -9 of scale-0 (${onVictim} clients); steady load before: p99 ${round(before.p99Ms)} ms`,
    );
    const killedAt = Date.now();
    process.kill(nodes[0].pid, "SIGKILL");
    const timeline = [];
    let counted = [];
    const sum = (field) => counted.reduce((s, c) => s + c[field], 0);
    let nextMark = 5000;
    while (Date.now() - killedAt < p.scaleStormWaitMs) {
      await sleep(250);
      counted = await all({ type: "count" }, "counted");
      const elapsed = Date.now() - killedAt;
      if (elapsed >= nextMark) {
        timeline.push({ s: nextMark / 1000, back: sum("back") });
        progress(`storm: ${sum("back")} of ${onVictim} back after ${nextMark / 1000} s`);
        nextMark += 5000;
      }
      if (sum("lost") >= onVictim && sum("back") + sum("gaveUp") >= sum("lost")) break;
    }
    const during = await take();
    const cpu3 = [nodeCpu(survivorNodes), await redisCpu()];
    const lastBack = Math.max(...counted.map((c) => c.lastBackAt));
    const back = sum("back");
    await sleep(p.scaleBeforeMs / 2);
    const after = await take();
    const ratio = before.p99Ms > 0 ? during.p99Ms / before.p99Ms : undefined;
    Object.assign(row, {
      killedNodeClients: onVictim,
      reconnectJitterMs: p.scaleReconnectJitterMs,
      lost: sum("lost"),
      back,
      gaveUp: sum("gaveUp"),
      reconnectErrors: sum("reconnectErrors"),
      reconnectLastError: counted.find((c) => c.lastReconnectError)?.lastReconnectError,
      allBackSeconds: back >= onVictim ? round((lastBack - killedAt) / 1000) : undefined,
      reconnectsPerSec: back > 0 ? Math.round(back / ((lastBack - killedAt) / 1000)) : 0,
      backTimeline: timeline,
      survivorCpuUsPerReconnect: back > 0 ? Math.round((cpu3[0] - cpu2[0]) / back) : undefined,
      redisCpuUsPerReconnect: back > 0 ? round((cpu3[1] - cpu2[1]) / back) : undefined,
      steady: {
        pairs: p.scaleSteadyPairs,
        msgsPerSec: Math.round((p.scaleSteadyPairs * 1000) / p.scaleSteadyIntervalMs),
        before: roundAll(before),
        storm: roundAll(during),
        after: roundAll(after),
      },
      stormP99Ratio: ratio === undefined ? undefined : round(ratio, 2),
    });
  }
}

/** A steady-load answer without its message type, figures rounded. */
function roundAll({ type: _type, ...taken }) {
  return Object.fromEntries(Object.entries(taken).map(([key, value]) => [key, round(value)]));
}

/** The scale row as a few lines of text. */
export function formatScale(row) {
  const out = [
    `scale: ${row.connections.toLocaleString("en-US")} connections over ${row.nodes} nodes, presence=${row.presence}, Redis ${row.redis}`,
    `  connect: ${row.acked} online in ${row.connectSeconds} s = ${row.connectsPerSec}/s; retried ${row.connectRetries}, failed ${row.connectFailed}${row.connectLastError ? ` (last error: ${row.connectLastError})` : ""}; node CPU ${row.nodeCpuUsPerConnect} µs/connect, Redis CPU ${row.redisCpuUsPerConnect} µs/connect (masters)`,
    `           clients per node ${row.clientsPerNode.join("/")}; online in Redis ${row.onlineInRedis}`,
    `  at rest: node RSS ${row.nodeRssBaseMiB} → ${row.nodeRssIdleMiB} MiB (sum, after GC) = ${row.nodeKiBPerConn} KiB per connection`,
    `           Redis used_memory ${row.redisUsedMemoryBeforeMiB} → ${row.redisUsedMemoryAfterMiB} MiB = ${row.redisBytesPerOnlineUser} B per online user (dataset ${row.redisDatasetBytesPerOnlineUser} B)`,
  ];
  if (row.stormSkipped !== undefined) out.push(`  storm:   skipped: ${row.stormSkipped}`);
  else if (row.killedNodeClients !== undefined) {
    const s = row.steady;
    out.push(
      `  storm:   kill -9 of a node with ${row.killedNodeClients} clients: ${row.back} back (reconnected, DM acked)${row.allBackSeconds === undefined ? `, not all (${row.gaveUp} gave up)` : ` in ${row.allBackSeconds} s`} = ${row.reconnectsPerSec}/s; reconnect errors ${row.reconnectErrors}${row.reconnectLastError ? ` (${row.reconnectLastError})` : ""}`,
      `           back after ${row.backTimeline.map((t) => `${t.s} s: ${t.back}`).join(", ") || "–"}; reconnect jitter ${row.reconnectJitterMs} ms`,
      `           per reconnect: surviving nodes' CPU ${row.survivorCpuUsPerReconnect} µs, Redis CPU ${row.redisCpuUsPerReconnect} µs (with the steady load)`,
      `  steady:  ${s.pairs} pairs, ${s.msgsPerSec} DMs/s; p50/p99/max ms before ${s.before.p50Ms}/${s.before.p99Ms}/${s.before.maxMs}, storm ${s.storm.p50Ms}/${s.storm.p99Ms}/${s.storm.maxMs} (p99 ×${row.stormP99Ratio}), after ${s.after.p50Ms}/${s.after.p99Ms}/${s.after.maxMs}; undelivered after 5 s: ${s.storm.undeliveredAfter5s}; errors ${s.before.errors + s.storm.errors + s.after.errors}`,
    );
  }
  return out.join("\n");
}
