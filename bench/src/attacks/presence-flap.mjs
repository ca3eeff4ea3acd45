// The presence flood, measured: one node (memory engine) on 127.0.0.1, USERS users connected,
// then one user ("flapper") connecting and disconnecting FLAPS times. Prints the frames and bytes
// the USERS listeners received while they connected and during the flaps, for a run with the
// default presence mode (every change, with the full online list) and one with presence=contacts.
//
//   pnpm build && node bench/src/attacks/presence-flap.mjs [--users 600] [--flaps 20] [--contacts 20]
//
// The flapper first sends one message to each of CONTACTS users (so it has that many contacts),
// the same in both runs. Connect figures include each listener's pong and the 20 queued "hi"
// messages of the contacts. Bounded: at most MAX_USERS users, MAX_FLAPS flaps, and the whole run
// stops itself after DEADLINE_MS (servers are stopped on every exit path). Talks to 127.0.0.1 only.
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import { SignJWT } from "jose";
import WebSocket from "ws";
import { MREZHEN_MAIN } from "../plan.mjs";
import { startServer, stopServer } from "../servers.mjs";

const MAX_USERS = 5000;
const MAX_FLAPS = 200;
const DEADLINE_MS = 240_000;
/** Connects in flight at once while the listeners connect. */
const CONCURRENCY = 50;
/** A phase ends once no listener received anything for this long (covers a 1 s coalescing window). */
const QUIET_MS = 1500;
const PHASE_LIMIT_MS = 90_000;

const { values } = parseArgs({
  options: {
    users: { type: "string", default: "600" },
    flaps: { type: "string", default: "20" },
    contacts: { type: "string", default: "20" },
    modes: { type: "string", default: "on,contacts" },
  },
});
const users = Math.min(MAX_USERS, Math.max(1, Number(values.users)));
const flaps = Math.min(MAX_FLAPS, Math.max(1, Number(values.flaps)));
const contacts = Math.min(users, Math.max(0, Number(values.contacts)));
const modes = values.modes.split(",");

const secret = randomBytes(32).toString("hex");
const key = new TextEncoder().encode(secret);
const token = (sub) =>
  new SignJWT({})
    .setProtectedHeader({ alg: "HS256" })
    .setSubject(sub)
    .setIssuer("mrezhen")
    .setIssuedAt()
    .setExpirationTime("1h")
    .sign(key);

const servers = [];
const logDir = mkdtempSync(join(tmpdir(), "presence-flap-"));
const sockets = new Set();

async function stopEverything() {
  for (const socket of sockets) socket.terminate();
  await Promise.all(servers.map((server) => stopServer(server)));
  rmSync(logDir, { recursive: true, force: true });
}

const deadline = setTimeout(() => {
  console.error(`presence-flap: over ${DEADLINE_MS} ms, stopping`);
  stopEverything().finally(() => process.exit(2));
}, DEADLINE_MS);
deadline.unref();

/** Opens a connection; resolves once the node answered a ping (the connection is online). */
function open(url, counter) {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url);
    sockets.add(socket);
    socket.once("unexpected-response", (_request, response) => {
      socket.terminate();
      reject(new Error(`upgrade refused with HTTP ${response.statusCode}`));
    });
    socket.once("error", reject);
    socket.once("close", () => sockets.delete(socket));
    socket.on("message", (data) => {
      if (counter !== undefined) {
        counter.frames++;
        counter.bytes += data.length;
        counter.last = performance.now();
      }
      if (data.length < 100 && data.toString().includes('"pong"')) resolve(socket);
    });
    socket.once("open", () => socket.send('{"type":"ping"}'));
  });
}

function close(socket) {
  return new Promise((resolve) => {
    if (socket.readyState === WebSocket.CLOSED) return resolve();
    socket.once("close", resolve);
    socket.close();
  });
}

/** Waits until the listeners have been quiet for QUIET_MS (or PHASE_LIMIT_MS passed). */
async function quiet(counter) {
  const started = performance.now();
  while (performance.now() - Math.max(counter.last, started) < QUIET_MS) {
    if (performance.now() - started > PHASE_LIMIT_MS) break;
    await sleep(100);
  }
}

const counter = () => ({ frames: 0, bytes: 0, last: 0 });
const mb = (bytes) => (bytes / 1e6).toFixed(3);

async function run(mode) {
  const server = await startServer({
    name: `mrezhen-${mode}`,
    script: MREZHEN_MAIN,
    env: {
      ...process.env,
      NODE_ENV: "production",
      HOST: "127.0.0.1",
      JWT_SECRET: secret,
      JWT_ISSUER: "mrezhen",
      LOG_LEVEL: "warn",
      RATE_LIMIT_MESSAGES: "1000000000",
      REDIS_URL: "",
    },
    logDir,
  });
  servers.push(server);
  const base = `ws://127.0.0.1:${server.port}/ws`;
  const query = mode === "on" ? "" : `&presence=${mode}`;
  try {
    // The flapper's conversations, before anyone listens.
    const flapperUrl = `${base}?token=${await token("flapper")}&presence=off`;
    const writer = await open(flapperUrl);
    for (let i = 0; i < contacts; i++)
      writer.send(JSON.stringify({ type: "direct_message", to: `u${i}`, content: "hi" }));
    writer.send('{"type":"ping"}');
    await sleep(200);
    await close(writer);

    const connecting = counter();
    const started = performance.now();
    const listeners = [];
    for (let next = 0; next < users; ) {
      const batch = [];
      for (; next < users && batch.length < CONCURRENCY; next++)
        batch.push(token(`u${next}`).then((t) => open(`${base}?token=${t}${query}`, connecting)));
      listeners.push(...(await Promise.all(batch)));
    }
    const connectMs = performance.now() - started;
    await quiet(connecting);
    const connect = { ...connecting };

    const flapping = counter();
    for (const socket of listeners)
      socket.on("message", (data) => {
        flapping.frames++;
        flapping.bytes += data.length;
        flapping.last = performance.now();
      });
    const flapStarted = performance.now();
    for (let i = 0; i < flaps; i++) await close(await open(flapperUrl));
    const flapMs = performance.now() - flapStarted;
    await quiet(flapping);
    await Promise.all(listeners.map(close));
    return { mode, connect, connectMs, flap: flapping, flapMs };
  } finally {
    await stopServer(server);
    servers.splice(servers.indexOf(server), 1);
  }
}

async function main() {
  console.log(
    `presence-flap: ${users} users, ${flaps} flaps of one user with ${contacts} contacts, memory engine, one node`,
  );
  console.log(
    "mode       | connect: frames | MB      | flaps: frames | MB      | per flap: frames | KB     | flaps took",
  );
  for (const mode of modes) {
    let result;
    try {
      result = await run(mode);
    } catch (error) {
      console.log(`${mode.padEnd(10)} | refused: ${error.message}`);
      continue;
    }
    const { connect, flap, flapMs } = result;
    console.log(
      [
        mode.padEnd(10),
        String(connect.frames).padStart(15),
        mb(connect.bytes).padStart(7),
        String(flap.frames).padStart(13),
        mb(flap.bytes).padStart(7),
        (flap.frames / flaps).toFixed(1).padStart(16),
        (flap.bytes / flaps / 1e3).toFixed(1).padStart(6),
        `${(flapMs / 1000).toFixed(2)} s`.padStart(10),
      ].join(" | "),
    );
  }
}

main()
  .catch((error) => {
    console.error(error);
    process.exitCode = 1;
  })
  .finally(async () => {
    clearTimeout(deadline);
    await stopEverything();
  });
