#!/usr/bin/env node
// The top self-time entries of a V8 CPU profile (`--cpu-prof`, e.g. through BENCH_SERVER_FLAGS),
// optionally over a part of it only, and per message when given a message count.
//
//   node bench/src/profile-top.mjs FILE.cpuprofile [--top 25] [--from-ms 0] [--to-ms …]
//                                  [--between FUNCTION] [--messages N] [--under REGEX]
//
// --under 'ioredis|redis-parser' also prints the samples whose stack has a frame from a file
// matching REGEX (inclusive time: what that code and everything it called cost, e.g. the Redis
// client's commands, its socket writes and its reply parsing).
//
// --between directMessage keeps the samples from the first to the last one whose own function
// is directMessage: the message traffic, without the startup and the connects before it.
//
// Lines: self ms, share of the non-idle samples, µs per message (with --messages), function and
// where it is (file:line). "(garbage collector)" and "(program)" are V8's own entries; "(idle)"
// is left out of the shares.
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    top: { type: "string", default: "25" },
    "from-ms": { type: "string", default: "0" },
    "to-ms": { type: "string" },
    messages: { type: "string" },
    between: { type: "string" },
    under: { type: "string" },
  },
});
const profile = JSON.parse(readFileSync(positionals[0], "utf8"));
const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
let fromUs = Number(values["from-ms"]) * 1000;
let toUs =
  values["to-ms"] === undefined ? Number.POSITIVE_INFINITY : Number(values["to-ms"]) * 1000;
if (values.between !== undefined) {
  let time = 0;
  let first;
  let last;
  for (let i = 0; i < profile.samples.length; i++) {
    time += profile.timeDeltas[i] ?? 0;
    if (nodes.get(profile.samples[i]).callFrame.functionName !== values.between) continue;
    first ??= time;
    last = time;
  }
  if (first === undefined) throw new Error(`no sample in ${values.between}`);
  fromUs = first;
  toUs = last;
  console.log(`samples from ${(first / 1000).toFixed(0)} ms to ${(last / 1000).toFixed(0)} ms`);
}

const under = values.under === undefined ? undefined : new RegExp(values.under);
const parents = new Map();
for (const n of profile.nodes) for (const child of n.children ?? []) parents.set(child, n.id);
const hasFrameUnder = new Map(); // node id → whether it or a caller matches `under`
function isUnder(id) {
  let known = hasFrameUnder.get(id);
  if (known === undefined) {
    const parent = parents.get(id);
    known = under.test(nodes.get(id).callFrame.url) || (parent !== undefined && isUnder(parent));
    hasFrameUnder.set(id, known);
  }
  return known;
}

const self = new Map();
let at = 0;
let total = 0;
let underUs = 0;
for (let i = 0; i < profile.samples.length; i++) {
  const delta = profile.timeDeltas[i] ?? 0;
  at += delta;
  if (at < fromUs || at > toUs) continue;
  const { callFrame } = nodes.get(profile.samples[i]);
  if (callFrame.functionName === "(idle)") continue;
  const file = callFrame.url.replace(
    /^.*\/(node_modules\/\.pnpm\/[^/]+\/node_modules\/|packages\/|apps\/)/,
    "",
  );
  const key = `${callFrame.functionName || "(anonymous)"} ${file}${file ? `:${callFrame.lineNumber + 1}` : ""}`;
  // The next sample's delta is this sample's duration (approximately).
  const us = profile.timeDeltas[i + 1] ?? delta;
  self.set(key, (self.get(key) ?? 0) + us);
  total += us;
  if (under !== undefined && isUnder(profile.samples[i])) underUs += us;
}
const messages = values.messages === undefined ? undefined : Number(values.messages);
console.log(`${(total / 1000).toFixed(0)} ms of non-idle samples`);
if (under !== undefined) {
  const per = messages === undefined ? "" : `, ${(underUs / messages).toFixed(2)} µs/msg`;
  console.log(
    `${(underUs / 1000).toFixed(1)} ms (${((underUs / total) * 100).toFixed(1)}%${per}) with a frame under /${values.under}/ on the stack`,
  );
}
for (const [key, us] of [...self].sort((a, b) => b[1] - a[1]).slice(0, Number(values.top))) {
  const per = messages === undefined ? "" : ` ${(us / messages).toFixed(2).padStart(6)} µs/msg`;
  console.log(
    `${(us / 1000).toFixed(1).padStart(8)} ms ${((us / total) * 100).toFixed(1).padStart(5)}%${per}  ${key}`,
  );
}
