#!/usr/bin/env node
// Instructions per message, below saturation, under valgrind's callgrind: one server (Mrezhen on
// the memory engine, or a peer) runs under callgrind while `pairs` sender→receiver pairs send one
// message at a time, each waiting for its ack and its delivery, so that every message is its own
// I/O event, as at a low fixed rate. After `warm` messages (JIT), the counters are zeroed; after
// `messages` more, they are dumped and divided by the count. Instruction counts do not depend on
// the machine's load, unlike CPU time on these shared cores; they leave out the kernel (syscalls).
//
//   node bench/src/instructions.mjs [--system mrezhen|ws-ack|ws-min] [--main PATH]
//                                   [--messages 3000] [--warm 6000] [--pairs 20] [--top 25]
//                                   [--keep DIR]
//
// --main runs another build of Mrezhen (e.g. a base commit's apps/server/dist/main.js) for A/B.
// Prints instructions per message and the functions with the most self cost (callgrind_annotate).
import { execFile, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import { SignJWT } from "jose";
import { createClient } from "./load/wire.mjs";
import { MREZHEN_MAIN, PEERS } from "./plan.mjs";
import { freePort } from "./servers.mjs";

const { values } = parseArgs({
  args: process.argv.slice(2).filter((a) => a !== "--"),
  options: {
    system: { type: "string", default: "mrezhen" },
    main: { type: "string" },
    messages: { type: "string", default: "3000" },
    warm: { type: "string", default: "6000" },
    pairs: { type: "string", default: "20" },
    top: { type: "string", default: "25" },
    cpus: { type: "string", default: "0" },
    // Keep the callgrind dumps (one per thread) in this directory, for callgrind_annotate.
    keep: { type: "string" },
  },
});
const messages = Number(values.messages);
const warm = Number(values.warm);
const pairCount = Number(values.pairs);
const script = values.system === "mrezhen" ? (values.main ?? MREZHEN_MAIN) : PEERS[values.system];
if (script === undefined || !existsSync(script)) throw new Error(`no server for ${values.system}`);

const dir = mkdtempSync(join(tmpdir(), "mrezhen-instructions-"));
const out = join(dir, "callgrind.out");
const secret = randomBytes(32).toString("hex");
const port = await freePort();
const env = {
  ...process.env,
  NODE_ENV: "production",
  HOST: "127.0.0.1",
  WS_PORT: String(port),
  JWT_SECRET: secret,
  JWT_ISSUER: "mrezhen",
  LOG_LEVEL: "warn",
  RATE_LIMIT_MESSAGES: "1000000000",
  RATE_LIMIT_WINDOW_MS: "60000",
};
for (const name of ["REDIS_URL", "REDIS_KEY_PREFIX", "NODE_ID"]) delete env[name];
const server = spawn(
  "taskset",
  [
    "-c",
    values.cpus,
    "valgrind",
    "--tool=callgrind",
    "--smc-check=all-non-file",
    // One dump per thread: the main thread's is the message path; V8's background threads
    // (optimising compiler, GC helpers) are reported apart.
    "--separate-threads=yes",
    `--callgrind-out-file=${out}`,
    process.execPath,
    script,
  ],
  { env, stdio: ["ignore", "ignore", "pipe"] },
);
let stderr = "";
server.stderr.on("data", (chunk) => {
  stderr = (stderr + chunk).slice(-4000);
});

try {
  const url = `ws://127.0.0.1:${port}`;
  for (let waited = 0; ; waited += 500) {
    if (waited > 180_000 || server.exitCode !== null)
      throw new Error(`server did not start:\n${stderr}`);
    try {
      if ((await fetch(`http://127.0.0.1:${port}/health`)).ok) break;
    } catch {}
    await sleep(500);
  }
  const key = new TextEncoder().encode(secret);
  const token = (sub) =>
    new SignJWT({})
      .setProtectedHeader({ alg: "HS256" })
      .setSubject(sub)
      .setIssuer("mrezhen")
      .setIssuedAt()
      .setExpirationTime("6h")
      .sign(key);
  const pairs = [];
  for (let i = 0; i < pairCount; i++) {
    const sender = createClient("part-a", url);
    const receiver = createClient("part-a", url);
    await receiver.open(await token(`r${i}`), 120_000);
    await sender.open(await token(`s${i}`), 120_000);
    pairs.push({ to: `r${i}`, sender, receiver });
  }
  // One message at a time: sent, then acked and delivered, before the next one is sent.
  const run = async (count) => {
    for (let n = 0; n < count; n++) {
      const pair = pairs[n % pairs.length];
      await new Promise((resolve, reject) => {
        let left = 2;
        const done = () => {
          if (--left === 0) resolve();
        };
        pair.sender.onAck = (ok) => (ok ? done() : reject(new Error(pair.sender.lastError)));
        pair.receiver.onDeliver = done;
        pair.sender.send(pair.to, 0);
      });
    }
  };
  await run(warm);
  await sleep(1000);
  execFileSync("callgrind_control", ["-z", String(server.pid)], { env, stdio: "ignore" });
  const started = performance.now();
  await run(messages);
  const seconds = (performance.now() - started) / 1000;
  // vgdb finds the server by user and host names, which valgrind reads from the environment
  // (HOST included): callgrind_control gets the server's.
  // vgdb's command reaches the server when it next runs: a message wakes it (its cost is in the
  // dump too, one message in `messages`).
  const dumping = new Promise((resolve, reject) =>
    execFile("callgrind_control", ["-d", String(server.pid)], { env }, (error) =>
      error ? reject(error) : resolve(),
    ),
  );
  for (let i = 0; i < 100 && !existsSync(`${out}.1-01`); i++) {
    await sleep(100);
    if (i === 5) await run(1);
  }
  await dumping;
  for (const pair of pairs) {
    pair.sender.ws.terminate();
    pair.receiver.ws.terminate();
  }
  // The dump after zeroing: callgrind.out.1-01 (main thread), -02… (the others).
  const dumps = readdirSync(dir)
    .filter((f) => /^callgrind\.out\.1-\d+$/.test(f))
    .sort()
    .map((f) => join(dir, f));
  const totals = dumps.map(
    (f) => Number(readFileSync(f, "utf8").match(/^totals: (\d+)/m)?.[1] ?? 0) / messages,
  );
  const dump = dumps[0];
  const others = totals.slice(1).reduce((a, b) => a + b, 0);
  const per = (n) => Math.round(n).toLocaleString("en-US");
  console.log(
    `${values.system}${values.main ? ` (${values.main})` : ""}: ${per(totals[0])} instructions per message on the main thread, ` +
      `${per(others)} on ${totals.length - 1} other threads ` +
      `(${messages} messages, ${pairCount} pairs, ${(messages / seconds).toFixed(0)} msgs/s under callgrind)`,
  );
  if (Number(values.top) > 0) {
    const annotated = execFileSync("callgrind_annotate", ["--threshold=100", dump], {
      maxBuffer: 64 * 1024 * 1024,
    }).toString();
    const lines = annotated.split("\n");
    const start = lines.findIndex((l) => /file:function/.test(l));
    console.log(
      lines
        .slice(start, start + 2 + Number(values.top))
        .map((l) => l.slice(0, 200))
        .join("\n"),
    );
  }
} finally {
  server.kill("SIGKILL");
  if (values.keep !== undefined) execFileSync("cp", ["-r", `${dir}/.`, values.keep]);
  rmSync(dir, { recursive: true, force: true });
}
