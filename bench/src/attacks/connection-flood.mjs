// A bounded connection-flood attack on one Mrezhen node, for before/after memory figures.
//
//   pnpm build && node bench/src/attacks/connection-flood.mjs [--flood 3000] [--readers 40]
//       [--requests 3] [--hold-s 75] [--url ws://127.0.0.1:<port> --pid <pid> --secret <s>]
//
// Without --url it starts a node of this checkout (apps/server/dist/main.js; memory engine,
// loopback only, rate limit raised so the history can be filled) and stops it at the end. With
// --url it attacks a running node on 127.0.0.1 (--pid for its RSS, --secret to mint tokens; its
// rate limit must allow 100 messages per user).
//
// Two phases, each bounded in connections and time, then the script stops by itself:
// 1. flood: one user opens --flood connections (100 at a time); counts accepted and refused.
// 2. non-readers: four users fill a conversation each with 100 messages of 5,000 control
//    characters (each escapes to `\u0001` in JSON: a get_history answer of ~3 MB). Then --readers
//    connections (spread over those users, at most 10 each, under the per-user cap) each ask
//    --requests times for that history and never read (the socket is paused). The node's RSS,
//    heap and external (Buffer) memory are sampled every half second for --hold-s seconds.
// Prints the figures: connections accepted and refused, RSS and external memory at their peak,
// and for how long the external memory stayed more than 16 MiB above where it started. When the
// script started the node, each sample follows a full garbage collection (SIGUSR2, which the
// bench's server hook answers with gc()), so "held" means still referenced, not garbage an idle
// node has not collected yet; a node given with --url is sampled as it is.
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { SignJWT } from "jose";
import WebSocket from "ws";
import { openFilesLimit, rssKiB } from "../proc.mjs";
import { startServer, stopServer } from "../servers.mjs";

const MAIN = fileURLToPath(new URL("../../../apps/server/dist/main.js", import.meta.url));
/** Every run ends within this, whatever happens. */
const HARD_LIMIT_MS = 240_000;
const FLOOD_CONCURRENCY = 100;
const USERS = 4;
const MESSAGES = 100;
const CONTENT = "\u0001".repeat(5000);
const HELD_ABOVE_BYTES = 16 * 1024 * 1024;
const RSS_HELD_ABOVE_KIB = 64 * 1024;
/**
 * Memory the node's JavaScript holds: heap and external (Buffers). Both count: a frame waiting as
 * a string sits in the heap, one encoded to a Buffer in external memory.
 */
const live = (sample) => (sample.heapUsed ?? 0) + (sample.external ?? 0);

const { values: opts } = parseArgs({
  options: {
    flood: { type: "string", default: "3000" },
    readers: { type: "string", default: "40" },
    requests: { type: "string", default: "3" },
    "hold-s": { type: "string", default: "75" },
    url: { type: "string" },
    pid: { type: "string" },
    secret: { type: "string" },
  },
});
const flood = bounded("flood", opts.flood, 1, 10_000);
const readers = bounded("readers", opts.readers, 1, 10 * USERS);
const requests = bounded("requests", opts.requests, 1, 10);
const holdMs = bounded("hold-s", opts["hold-s"], 1, 150) * 1000;

function bounded(name, raw, min, max) {
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max)
    throw new Error(`--${name} must be a whole number from ${min} to ${max}`);
  return value;
}

const hardStop = setTimeout(() => {
  console.error(`stopping: the run passed ${HARD_LIMIT_MS / 1000} s`);
  process.exit(2);
}, HARD_LIMIT_MS);
hardStop.unref();

const sockets = new Set();
let server;

async function main() {
  const needed = flood + readers + 256;
  if (openFilesLimit().soft < needed)
    throw new Error(`needs ${needed} open files; raise ulimit -n`);

  let url;
  let pid;
  let secret;
  if (opts.url === undefined) {
    if (!existsSync(MAIN)) throw new Error(`${MAIN} is missing: run \`pnpm build\` first`);
    secret = randomBytes(32).toString("hex");
    const logDir = mkdtempSync(join(tmpdir(), "mrezhen-flood-"));
    const env = {
      PATH: process.env.PATH,
      NODE_ENV: "production",
      HOST: "127.0.0.1",
      JWT_SECRET: secret,
      LOG_LEVEL: "warn",
      RATE_LIMIT_MESSAGES: "100000",
    };
    server = await startServer({ name: "mrezhen", script: MAIN, env, logDir });
    server.logDir = logDir;
    url = `ws://127.0.0.1:${server.port}`;
    pid = server.pid;
  } else {
    url = opts.url;
    if (!/^ws:\/\/127\.0\.0\.1:\d+\/?$/.test(url))
      throw new Error("--url must be ws://127.0.0.1:<port>");
    url = url.replace(/\/$/, "");
    pid = opts.pid === undefined ? undefined : Number(opts.pid);
    secret = opts.secret;
    if (secret === undefined) throw new Error("--secret is required with --url");
  }
  const http = url.replace(/^ws/, "http");
  const key = new TextEncoder().encode(secret);
  const token = (sub) =>
    new SignJWT({})
      .setProtectedHeader({ alg: "HS256" })
      .setSubject(sub)
      .setIssuer("mrezhen")
      .setExpirationTime("1h")
      .sign(key);
  // Only a node started here has the hook that turns SIGUSR2 into gc(); others would die of it.
  const collect = server === undefined ? undefined : () => process.kill(server.pid, "SIGUSR2");
  const memory = () => sampleMemory(http, pid, collect);

  // ---- Phase 1: one user, many connections ----------------------------------------------------
  const floodToken = await token("flood-many");
  const floodStart = await memory();
  const outcomes = { accepted: 0, refused: new Map(), failed: 0 };
  let next = 0;
  const opened = [];
  await Promise.all(
    Array.from({ length: FLOOD_CONCURRENCY }, async () => {
      while (next < flood) {
        next++;
        const result = await open(`${url}/ws?token=${floodToken}&presence=off`);
        if (result.socket !== undefined) {
          outcomes.accepted++;
          opened.push(result.socket);
        } else if (result.status !== undefined) {
          outcomes.refused.set(result.status, (outcomes.refused.get(result.status) ?? 0) + 1);
        } else outcomes.failed++;
      }
    }),
  );
  await sleep(500);
  const floodEnd = await memory();
  for (const socket of opened) socket.terminate();
  await sleep(1000);

  // ---- Phase 2: non-readers of large history ----------------------------------------------------
  const users = Array.from({ length: USERS }, (_, i) => `flood-reader-${i}`);
  await Promise.all(users.map(async (user) => fill(url, await token(user))));
  await sleep(500);
  const before = await memory();
  const attackStart = performance.now();
  const nonReaders = [];
  for (let i = 0; i < readers; i++) {
    const result = await open(`${url}/ws?token=${await token(users[i % USERS])}&presence=off`);
    if (result.socket === undefined) continue;
    const socket = result.socket;
    for (let r = 0; r < requests; r++)
      socket.send(JSON.stringify({ type: "get_history", with: "flood-peer", limit: 100 }));
    socket.pause(); // never reads again: the node's answers pile up
    nonReaders.push(socket);
  }
  let peak = before;
  let lastHeldAt = attackStart;
  let lastRssHeldAt = attackStart;
  const samples = [];
  while (performance.now() - attackStart < holdMs) {
    await sleep(400);
    const rssNow = pid === undefined ? undefined : rssKiB(pid);
    if ((rssNow ?? 0) > (peak.rssKiB ?? 0)) peak = { ...peak, rssKiB: rssNow };
    const now = await memory();
    samples.push(now);
    if ((now.rssKiB ?? 0) > (peak.rssKiB ?? 0)) peak = { ...peak, rssKiB: now.rssKiB };
    if ((now.external ?? 0) > (peak.external ?? 0)) peak = { ...peak, external: now.external };
    if ((now.heapUsed ?? 0) > (peak.heapUsed ?? 0)) peak = { ...peak, heapUsed: now.heapUsed };
    if (live(now) > live(before) + HELD_ABOVE_BYTES) lastHeldAt = performance.now();
    if ((rssNow ?? 0) > (before.rssKiB ?? 0) + RSS_HELD_ABOVE_KIB)
      lastRssHeldAt = performance.now();
  }
  const after = await memory();
  const refusals = await refusalCounters(http);
  for (const socket of nonReaders) socket.terminate();

  const mib = (bytes) => (bytes === undefined ? "–" : `${(bytes / 1048576).toFixed(1)} MiB`);
  const kib = (k) => (k === undefined ? "–" : `${(k / 1024).toFixed(1)} MiB`);
  const refused = [...outcomes.refused].map(([s, n]) => `${n} × HTTP ${s}`).join(", ") || "none";
  console.log(`node: ${url}${pid === undefined ? "" : ` (pid ${pid})`}`);
  console.log(`flood: one user, ${flood} connections`);
  console.log(`  accepted ${outcomes.accepted}, refused ${refused}, failed ${outcomes.failed}`);
  console.log(
    `  node RSS ${kib(floodStart.rssKiB)} -> ${kib(floodEnd.rssKiB)} with the connections open`,
  );
  console.log(
    `non-readers: ${nonReaders.length} of ${readers} connected, each asked ${requests} × ~3 MB of history and never read`,
  );
  console.log(
    `  node RSS: ${kib(before.rssKiB)} before, ${kib(peak.rssKiB)} peak, ${kib(after.rssKiB)} after ${holdMs / 1000} s`,
  );
  console.log(
    `  node external (Buffers): ${mib(before.external)} before, ${mib(peak.external)} peak, ${mib(after.external)} after`,
  );
  console.log(
    `  node heap used: ${mib(before.heapUsed)} before, ${mib(peak.heapUsed)} peak, ${mib(after.heapUsed)} after`,
  );
  const seconds = (at) => ((at - attackStart) / 1000).toFixed(1);
  console.log(
    `  memory held: heap + external${collect === undefined ? "" : " (after gc)"} over ${mib(HELD_ABOVE_BYTES)} above start for ${seconds(lastHeldAt)} s; RSS over ${kib(RSS_HELD_ABOVE_KIB)} above start for ${seconds(lastRssHeldAt)} s`,
  );
  if (refusals !== "") console.log(`  node counters: ${refusals}`);
}

/** Opens one WebSocket: { socket } once open, { status } when the upgrade is refused, {} on error. */
function open(target) {
  return new Promise((resolve) => {
    const socket = new WebSocket(target, { perMessageDeflate: false });
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    const timer = setTimeout(() => {
      socket.terminate();
      resolve({});
    }, 10_000);
    socket.once("open", () => {
      clearTimeout(timer);
      resolve({ socket });
    });
    socket.once("unexpected-response", (_request, response) => {
      clearTimeout(timer);
      response.resume();
      socket.terminate();
      resolve({ status: response.statusCode });
    });
    socket.once("error", () => {
      clearTimeout(timer);
      resolve({});
    });
  });
}

/** One user sends `flood-peer` MESSAGES heavy messages, waiting for every ack. */
async function fill(url, userToken) {
  const { socket } = await open(`${url}/ws?token=${userToken}&presence=off`);
  if (socket === undefined) throw new Error("could not connect to fill the history");
  let acked = 0;
  await new Promise((resolve, reject) => {
    socket.on("message", (data) => {
      const frame = JSON.parse(data.toString());
      if (frame.type === "message_ack" && ++acked === MESSAGES) resolve();
      if (frame.type === "error") reject(new Error(`filling the history: ${frame.message}`));
    });
    for (let i = 0; i < MESSAGES; i++)
      socket.send(JSON.stringify({ type: "direct_message", to: "flood-peer", content: CONTENT }));
  });
  socket.close();
}

/**
 * The node's RSS (from /proc, when its pid is known) and its heap and external memory
 * (/metrics), after a full collection when `collect` can ask for one.
 */
async function sampleMemory(http, pid, collect) {
  const sample = {};
  if (collect !== undefined) {
    collect();
    await sleep(100);
  }
  if (pid !== undefined) {
    try {
      sample.rssKiB = rssKiB(pid);
    } catch {}
  }
  try {
    const text = await (
      await fetch(`${http}/metrics`, { signal: AbortSignal.timeout(2000) })
    ).text();
    sample.heapUsed = metricValue(text, "mrezhen_process_nodejs_heap_size_used_bytes");
    sample.external = metricValue(text, "mrezhen_process_nodejs_external_memory_bytes");
  } catch {}
  return sample;
}

function metricValue(text, name) {
  const match = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, "m").exec(text);
  return match === null ? undefined : Number(match[1]);
}

/** The refusal and slow-reader counters, where the node has them (not before this change). */
async function refusalCounters(http) {
  try {
    const text = await (
      await fetch(`${http}/metrics`, { signal: AbortSignal.timeout(2000) })
    ).text();
    return text
      .split("\n")
      .filter((line) => /^mrezhen_(upgrades_refused|slow_reader_closes)_total/.test(line))
      .map((line) => line.replace(/,?node_id="[^"]*"/, "").replace("{,", "{"))
      .filter((line) => !line.endsWith(" 0"))
      .join("; ");
  } catch {
    return "";
  }
}

async function cleanUp() {
  for (const socket of sockets) socket.terminate();
  if (server !== undefined) {
    await stopServer(server);
    rmSync(server.logDir, { recursive: true, force: true });
  }
}

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.once(signal, () => {
    cleanUp().finally(() => process.exit(130));
  });
}

try {
  await main();
  await cleanUp();
  process.exit(0);
} catch (error) {
  console.error(error instanceof Error ? error.message : error);
  await cleanUp();
  process.exit(1);
}
