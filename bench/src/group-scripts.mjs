#!/usr/bin/env node
// How long the Redis scripts of a large group's message run, alone with their Redis:
// `node bench/src/group-scripts.mjs --redis redis://127.0.0.1:PORT [--members 1000]
// [--messages 100] [--chunk-members 250] [--chunk-above 256]` (after `pnpm build`). Use a
// redis-server of its own (`redis-server --port PORT --save "" --appendonly no`): it lowers
// slowlog-log-slower-than to 150 µs meanwhile (every script of a 1,000-member group is longer;
// the commands inside them are not) and resets SLOWLOG.
//
// Two engines ("nodes") in this process, the members all online, half on each; one group of
// all of them; its messages sent one after the other (each waiting for the previous one's ack,
// which a chunked entry gets once its sender's inbox and the fan-out queue have it: the nodes
// write the rest after it). Prints, per script (by SHA), the count, median, p90 and longest
// SLOWLOG duration, and the time per message: to its ack, and until the last one's fan-out
// queue was empty. With --chunk-members above --members, every message is one script (the
// build before the chunked fan-out, docs/groups.md "Large groups"). SLOWLOG times by the wall
// clock: on a busy machine the longest entries count time Redis waited for a core.
import { randomUUID } from "node:crypto";
import { parseArgs } from "node:util";
import { Redis } from "ioredis";
import { createRedisEngine } from "../../packages/engine-redis/dist/index.js";
import { deletePrefix } from "../../packages/testkit/dist/index.js";

const { values } = parseArgs({
  options: {
    redis: { type: "string", default: process.env.BENCH_REDIS_URL ?? "redis://127.0.0.1:6379" },
    members: { type: "string", default: "1000" },
    messages: { type: "string", default: "100" },
    "chunk-members": { type: "string", default: "250" },
    "chunk-above": { type: "string", default: "256" },
  },
});
const url = values.redis;
const members = Number(values.members);
const messages = Number(values.messages);
const groupFanOut = {
  chunkAbove: Number(values["chunk-above"]),
  chunkMembers: Number(values["chunk-members"]),
};
const keyPrefix = `group-scripts:${randomUUID().slice(0, 8)}:`;
const engine = (n) =>
  createRedisEngine({
    url,
    keyPrefix,
    nodeId: `node-${n}-${randomUUID().slice(0, 8)}`,
    rateLimit: { limit: 1_000_000, windowMs: 1000 },
    heartbeatIntervalMs: 60_000,
    nodeTtlMs: 180_000,
    groups: { maxMembers: members, maxGroupsPerUser: 500, receiptsMaxMembers: 20 },
    groupFanOut,
  });
const nodes = [await engine(1), await engine(2)];
const admin = new Redis(url);
const users = Array.from({ length: members }, (_, i) => `user-${i}`);
await Promise.all(users.map((user, i) => nodes[i % 2].presence.connect(user)));
const groupId = `group-${randomUUID().slice(0, 8)}`;
const now = () => new Date().toISOString();
await nodes[0].groups.create({
  groupId,
  name: "large",
  createdBy: users[0],
  members: users,
  eventId: randomUUID(),
  timestamp: now(),
});
const send = (i) =>
  nodes[i % 2].groups.append({
    id: randomUUID(),
    groupId,
    from: users[i % 2],
    content: "hello ".repeat(10),
    timestamp: now(),
    senderConnId: "bench",
  });
for (let i = 0; i < 5; i++) await send(i); // warm-up

const [, threshold] = await admin.config("GET", "slowlog-log-slower-than");
await admin.config("SET", "slowlog-log-slower-than", "150");
await admin.config("SET", "slowlog-max-len", "100000");
await admin.slowlog("RESET");
const started = performance.now();
const ackMs = [];
for (let i = 0; i < messages; i++) {
  const sent = performance.now();
  await send(i);
  ackMs.push(performance.now() - sent);
}
const elapsed = performance.now() - started;
// The fan-outs after the last acks: every inbox written before SLOWLOG is read.
const fanOutKey = `${keyPrefix}group-fanout:{g:${groupId}}`;
while ((await admin.exists(fanOutKey)) === 1)
  await new Promise((resolve) => setTimeout(resolve, 1));
const drained = performance.now() - started;
const entries = await admin.slowlog("GET", 100_000);
await admin.config("SET", "slowlog-log-slower-than", threshold);

const bySha = new Map();
for (const [, , micros, args] of entries) {
  if (String(args[0]).toLowerCase() !== "evalsha") continue;
  const sha = String(args[1]).slice(0, 8);
  bySha.set(sha, [...(bySha.get(sha) ?? []), Number(micros)]);
}
const at = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
console.log(
  `${members} members on 2 nodes, chunks of ${groupFanOut.chunkMembers} above ${groupFanOut.chunkAbove}:`,
);
for (const [sha, durations] of bySha) {
  const sorted = durations.sort((a, b) => a - b);
  console.log(
    `  evalsha ${sha}: ${sorted.length} logged, median ${at(sorted, 0.5)} µs, p90 ${at(sorted, 0.9)} µs, longest ${sorted.at(-1)} µs`,
  );
}
const acks = ackMs.sort((a, b) => a - b);
console.log(
  `  ${messages} messages one after another: ${(elapsed / messages).toFixed(2)} ms each to the ack ` +
    `(median ${at(acks, 0.5).toFixed(2)}, p90 ${at(acks, 0.9).toFixed(2)} ms), ` +
    `${(drained / messages).toFixed(2)} ms each until every inbox had them`,
);
await Promise.all(nodes.map((node) => node.close()));
admin.disconnect();
await deletePrefix(url, keyPrefix);
