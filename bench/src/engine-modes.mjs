#!/usr/bin/env node
// DM throughput of the Redis engine, standalone mode against Redis Cluster mode, on this
// machine: `node bench/src/engine-modes.mjs [--redis redis://127.0.0.1:6379] [--seconds 5]
// [--cycles 3] [--concurrency 64] [--replicas 1|0]` (after `pnpm build`). Starts its own local
// Redis Cluster (3 masters, each with a replica unless --replicas 0; testkit's
// redisClusterForTests) unless REDIS_CLUSTER_NODES names one.
//
// Two engines (two "nodes") in this process: senders on the first, their recipients online on
// the second (subscribed and registered, as a node does). `concurrency` senders each send DMs
// one after the other, as clients waiting for their ack, with a clientMsgId and behind the rate
// limit (appendIfAllowed: the path a real send takes), for `seconds`; a slice counts the acks
// and checks that every DM reached the recipients' node. Modes alternate within each cycle
// (paired slices), and the ratio is cluster ÷ standalone per cycle. The figure is the engine's
// alone (no WebSocket, no JSON parsing of frames): the node's own work, which the full bench
// adds to both modes alike, is left out, so this is the harder comparison for cluster mode.
import { randomUUID } from "node:crypto";
import { parseArgs } from "node:util";
import { Redis } from "ioredis";
import { createRedisEngine } from "../../packages/engine-redis/dist/index.js";
import { deletePrefix, redisClusterForTests } from "../../packages/testkit/dist/index.js";

const { values } = parseArgs({
  options: {
    redis: { type: "string", default: process.env.BENCH_REDIS_URL ?? "redis://127.0.0.1:6379" },
    seconds: { type: "string", default: "5" },
    cycles: { type: "string", default: "3" },
    concurrency: { type: "string", default: "64" },
    // 1: each master has a replica (the production topology); 0: 3 masters alone.
    replicas: { type: "string", default: "1" },
  },
});
const seconds = Number(values.seconds);
const cycles = Number(values.cycles);
const concurrency = Number(values.concurrency);
const RATE = { limit: 1_000_000_000, windowMs: 60_000 };

const cluster = await redisClusterForTests({ replicas: values.replicas === "0" ? 0 : 1 });
if (cluster === undefined) throw new Error("no Redis Cluster (see the warning above)");

/** used_cpu_sys + used_cpu_user (seconds) of every Redis server of a mode, summed. */
async function redisCpu(mode) {
  const urls = mode === "cluster" ? cluster.nodes.map((node) => `redis://${node}`) : [values.redis];
  let total = 0;
  for (const url of urls) {
    const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0 });
    try {
      await client.connect();
      const info = await client.info("cpu");
      total += Number(/used_cpu_sys:([\d.]+)/.exec(info)?.[1] ?? 0);
      total += Number(/used_cpu_user:([\d.]+)/.exec(info)?.[1] ?? 0);
    } finally {
      client.disconnect();
    }
  }
  return total;
}

async function slice(mode) {
  const keyPrefix = `mrezhen-bench-modes:${randomUUID().slice(0, 8)}:`;
  const where =
    mode === "cluster" ? { url: "", clusterNodes: cluster.nodes } : { url: values.redis };
  const make = (nodeId) =>
    createRedisEngine({ ...where, keyPrefix, nodeId, rateLimit: RATE, heartbeatIntervalMs: 3000 });
  const [a, b] = [await make("bench-a"), await make("bench-b")];
  let received = 0;
  b.broker.setHandler({
    onUserEvent: (_user, event) => {
      if (event.kind === "message") received++;
    },
    onPresence: () => {},
  });
  for (let i = 0; i < concurrency; i++) {
    await b.broker.subscribe(`r${i}`);
    await b.presence.connect(`r${i}`);
  }
  let acked = 0;
  let errors = 0;
  const redisBefore = await redisCpu(mode);
  const nodeBefore = process.cpuUsage();
  const deadline = performance.now() + seconds * 1000;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async (_, i) => {
      for (let n = 0; performance.now() < deadline; n++) {
        try {
          const result = await a.messages.appendIfAllowed({
            id: randomUUID(),
            from: `s${i}`,
            to: `r${i}`,
            content: "a typical short direct message, about sixty characters long",
            timestamp: new Date().toISOString(),
            senderConnId: `s${i}-conn`,
            clientMsgId: `c${n}`,
          });
          if (result.refused) errors++;
          else acked++;
        } catch {
          errors++;
        }
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  const nodeCpu = process.cpuUsage(nodeBefore);
  const nodeUs = (nodeCpu.user + nodeCpu.system) / acked;
  const redisUs = (((await redisCpu(mode)) - redisBefore) * 1e6) / acked;
  await new Promise((resolve) => setTimeout(resolve, 200));
  const missing = acked - received;
  await Promise.all([a.close(), b.close()]);
  if (mode === "standalone") await deletePrefix(values.redis, keyPrefix);
  return { mode, perSecond: acked / elapsed, acked, errors, missing, nodeUs, redisUs };
}

const ratios = [];
for (let cycle = 1; cycle <= cycles; cycle++) {
  const order = cycle % 2 === 1 ? ["standalone", "cluster"] : ["cluster", "standalone"];
  const results = {};
  for (const mode of order) results[mode] = await slice(mode);
  const ratio = results.cluster.perSecond / results.standalone.perSecond;
  ratios.push(ratio);
  for (const mode of ["standalone", "cluster"]) {
    const r = results[mode];
    console.log(
      `cycle ${cycle} ${mode.padEnd(10)} ${r.perSecond.toFixed(0).padStart(6)} DMs/s ` +
        `(${r.acked} acked, ${r.errors} errors, ${r.missing} not received); CPU per DM: ` +
        `node process ${r.nodeUs.toFixed(0)} µs, Redis servers ${r.redisUs.toFixed(0)} µs`,
    );
  }
  console.log(`cycle ${cycle} cluster ÷ standalone = ${ratio.toFixed(2)}`);
}
ratios.sort((x, y) => x - y);
console.log(
  `median cluster ÷ standalone over ${cycles} cycles: ${ratios[Math.floor(ratios.length / 2)].toFixed(2)} ` +
    `(concurrency ${concurrency}, ${seconds} s slices, ${values.replicas === "0" ? "3 masters, no replicas" : "3 masters + 3 replicas"})`,
);
await cluster.close();
