// One client process of the storm scenario (storm.mjs forks several, each from its own loopback
// source address: one process may hold 20,000 descriptors, one address about 28,000 ports).
// Connections are bare TCP sockets speaking just enough WebSocket: the upgrade as one string,
// `{"type":"ping"}` as the first frame, the server's `pong` frame as the sign that the connection is
// online (registered, subscribed, queue flushed), and a pong for every WebSocket ping of the
// server's heartbeat. An idle client costs a socket and a small object, so one process holds
// thousands while the servers, not the clients, set the pace.
//
// IPC, from storm.mjs: {type:"setup", …} → {type:"ready"}; {type:"connect"} → {type:"connected",
// …}; {type:"count"} → {type:"counted", …}; {type:"leave"} → {type:"left", …}.
//
// The scale scenario (scale.mjs) adds, in setup: `presence` (the connections' presence mode),
// `reconnectJitterMs` (reconnects wait a random delay up to it), `victims` (this process' first `victims` users go to the first node, the rest round-robin over
// the others; without it, user i goes to node i mod K) and `reconnect`: a connection the server
// closes (its node was killed) reconnects at once to one of the other nodes (at most
// `concurrency` connects in flight), then sends one direct message and counts itself back once
// its ack arrives. And {type:"steady", pairs, intervalMs} → {type:"steady-ready"}: this process
// opens sender→receiver pairs and each sender sends a DM every intervalMs; {type:"steady-take"} →
// {type:"steady-taken", …}: send→delivery latency of the messages sent since the last take.
import net from "node:net";
import { SignJWT } from "jose";

const HEADER_END = Buffer.from("\r\n\r\n");
const SWITCHING = Buffer.from("HTTP/1.1 101");
const KEY = "dGhlIHNhbXBsZSBub25jZQ==";
/** `{"type":"ping"}` in a masked text frame with an all-zero mask (see load/wire.mjs). */
const PING_TEXT = '{"type":"ping"}';
const APP_PING = Buffer.concat([
  Buffer.from([0x81, 0x80 | PING_TEXT.length, 0, 0, 0, 0]),
  Buffer.from(PING_TEXT),
]);
const PONG_TEXT = Buffer.from('"pong"');
const CONNECT_TIMEOUT_MS = 60_000;
/** A reconnecting client gives up after this long (the scale scenario waits less). */
const RECONNECT_GIVE_UP_MS = 180_000;
const ACK_TEXT = Buffer.from('"message_ack"');
const ERROR_TEXT = Buffer.from('"type":"error"');

let setup;
const connections = [];
const stats = {
  acked: 0,
  failed: 0,
  retried: 0,
  dropped: 0,
  lastError: "",
  lastAckAt: 0,
  // Reconnects (scale scenario): connections lost, back (DM acked), given up; wall clock (ms).
  lost: 0,
  back: 0,
  gaveUp: 0,
  reconnectErrors: 0,
  lastBackAt: 0,
  lastReconnectError: "",
};
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A masked text frame (all-zero mask, see load/wire.mjs). */
function textFrame(text) {
  const payload = Buffer.from(text);
  const header =
    payload.length < 126
      ? Buffer.from([0x81, 0x80 | payload.length])
      : Buffer.from([0x81, 0x80 | 126, payload.length >> 8, payload.length & 0xff]);
  return Buffer.concat([header, Buffer.alloc(4), payload]);
}

/** Counts connects in flight, so that reconnects keep to `concurrency` like the first connects. */
const slots = {
  free: 0,
  waiting: [],
  async take() {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise((resolve) => this.waiting.push(resolve));
  },
  give() {
    const next = this.waiting.shift();
    if (next === undefined) this.free++;
    else next();
  },
};

/** A pong for a server ping: masked (zero mask), echoing its payload (≤ 125 bytes). */
function pongFrame(payload) {
  return Buffer.concat([Buffer.from([0x8a, 0x80 | payload.length, 0, 0, 0, 0]), payload]);
}

/** Reads the server's frames (unmasked): pings answered, the first text checked for the pong. */
function readFrames(conn) {
  let buffered = conn.buffered;
  while (buffered.length >= 2) {
    const opcode = buffered[0] & 0x0f;
    let length = buffered[1] & 0x7f;
    let start = 2;
    if (length === 126) {
      if (buffered.length < 4) break;
      length = buffered.readUInt16BE(2);
      start = 4;
    } else if (length === 127) {
      if (buffered.length < 10) break;
      length = Number(buffered.readBigUInt64BE(2));
      start = 10;
    }
    if (buffered.length < start + length) break;
    const payload = buffered.subarray(start, start + length);
    buffered = buffered.subarray(start + length);
    if (opcode === 0x9) conn.socket.write(pongFrame(payload));
    else if (opcode === 0x1 && !conn.acked && payload.indexOf(PONG_TEXT) >= 0) acked(conn);
    else if (opcode === 0x1) conn.onText?.(payload);
    else if (opcode === 0x8) conn.closedByServer = true;
  }
  conn.buffered = buffered.length === 0 ? EMPTY : Buffer.from(buffered);
}

const EMPTY = Buffer.alloc(0);

function acked(conn) {
  conn.acked = true;
  stats.acked++;
  stats.lastAckAt = performance.now();
  conn.resolve();
}

/**
 * Local ports, chosen here rather than by the kernel. Asked for a port of a given source address
 * (bind to it with port 0), Linux searches the ports for a free one, checking each against every
 * socket on it: with 10,000 connections from one address, that search took 40 % of the client
 * core in a 20,000-connection storm (perf: inet_bhash2_conflict and kin), and the clients, not
 * the servers, set the pace. A port of our own is one check. A port that is taken (a service
 * listening on every address, a connection of an earlier run still in TIME_WAIT) fails the
 * socket at once, and the connect tries the next one.
 */
const LOCAL_PORTS = { first: 10_000, last: 64_999 };
let nextPort =
  LOCAL_PORTS.first + Math.floor(Math.random() * (LOCAL_PORTS.last - LOCAL_PORTS.first));
const PORT_TAKEN = new Set(["EADDRINUSE", "EADDRNOTAVAIL"]);
const MAX_PORT_TRIES = 100;

function localPort() {
  const port = nextPort;
  nextPort = port >= LOCAL_PORTS.last ? LOCAL_PORTS.first : port + 1;
  return port;
}

function open(url, token, user, portTries = 0) {
  const { hostname, port } = new URL(url);
  const socket = net.connect({
    port: Number(port),
    host: hostname,
    localAddress: setup.address,
    localPort: localPort(),
  });
  const conn = { socket, buffered: EMPTY, upgraded: false, acked: false, left: false };
  conn.closedByServer = false;
  conn.url = url;
  conn.token = token;
  conn.user = user;
  conn.onText = undefined;
  connections.push(conn);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error("connect timeout")), CONNECT_TIMEOUT_MS);
    const fail = (error) => {
      clearTimeout(timer);
      if (conn.acked) return;
      socket.destroy();
      reject(error);
    };
    conn.resolve = () => {
      clearTimeout(timer);
      resolve(conn);
    };
    socket.setNoDelay(true);
    socket.once("connect", () =>
      socket.write(
        `GET /ws?token=${token}&presence=${setup.presence ?? "off"} HTTP/1.1\r\nHost: ${hostname}:${port}\r\n` +
          "Upgrade: websocket\r\nConnection: Upgrade\r\n" +
          `Sec-WebSocket-Key: ${KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      ),
    );
    socket.on("error", (error) => {
      if (!conn.upgraded && PORT_TAKEN.has(error.code) && portTries < MAX_PORT_TRIES) {
        // Not a failure of the server's: the same connect from the next port.
        clearTimeout(timer);
        conn.abandoned = true;
        socket.destroy();
        connections.splice(connections.indexOf(conn), 1);
        open(url, token, user, portTries + 1).then(resolve, reject);
        return;
      }
      fail(error);
    });
    socket.on("close", () => {
      if (conn.abandoned) return;
      if (conn.acked && !conn.left) {
        stats.dropped++;
        if (setup.reconnect && !conn.steady) void reconnect(conn);
      }
      fail(new Error(conn.closedByServer ? "closed by the server" : "connection closed"));
    });
    socket.on("data", (chunk) => {
      conn.buffered = conn.buffered.length === 0 ? chunk : Buffer.concat([conn.buffered, chunk]);
      if (!conn.upgraded) {
        const end = conn.buffered.indexOf(HEADER_END);
        if (end < 0) return;
        if (!conn.buffered.subarray(0, SWITCHING.length).equals(SWITCHING)) {
          return fail(new Error(conn.buffered.subarray(0, conn.buffered.indexOf(13)).toString()));
        }
        conn.upgraded = true;
        conn.buffered = conn.buffered.subarray(end + HEADER_END.length);
        socket.write(APP_PING);
      }
      readFrames(conn);
    });
  });
}

function mintToken(subject) {
  return new SignJWT({})
    .setProtectedHeader({ alg: "HS256" })
    .setSubject(subject)
    .setIssuer(setup.issuer)
    .setIssuedAt()
    .setExpirationTime("6h")
    .sign(new TextEncoder().encode(setup.secret));
}

async function mintTokens() {
  const tokens = [];
  for (let i = setup.first; i < setup.first + setup.count; i++)
    tokens.push(await mintToken(`storm-${i}`));
  return tokens;
}

/** The node of this process' i-th user (see the header). */
function nodeOf(i) {
  const k = setup.urls.length;
  if (setup.victims === undefined) return (setup.first + i) % k;
  return i < setup.victims ? 0 : 1 + ((i - setup.victims) % (k - 1));
}

/** Sends one DM on an online connection; resolves on its ack, rejects on an error frame. */
function sendAndAwaitAck(conn, to) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no ack within 30 s")), 30_000);
    conn.onText = (payload) => {
      if (payload.indexOf(ACK_TEXT) >= 0) {
        clearTimeout(timer);
        conn.onText = undefined;
        resolve();
      } else if (payload.indexOf(ERROR_TEXT) >= 0) {
        clearTimeout(timer);
        conn.onText = undefined;
        reject(new Error(payload.toString().slice(0, 200)));
      }
    };
    conn.socket.write(textFrame(JSON.stringify({ type: "direct_message", to, content: "back" })));
  });
}

/** Nodes found refusing connections (killed): a reconnect tries them no more. */
const deadUrls = new Set();

/**
 * A client whose connection the server lost: reconnects to one of the other nodes at once (spread
 * by user), sends one DM to its neighbour and is back once the ack arrives; retries (after 100 to
 * 500 ms) on any failure, on the next node, until RECONNECT_GIVE_UP_MS.
 */
async function reconnect(lostConn) {
  stats.lost++;
  deadUrls.add(lostConn.url);
  // Clients that spread their reconnects (a random delay up to reconnectJitterMs; default none).
  if (setup.reconnectJitterMs > 0) await sleep(Math.random() * setup.reconnectJitterMs);
  const started = performance.now();
  const user = lostConn.user;
  for (let attempt = 0; performance.now() - started < RECONNECT_GIVE_UP_MS; attempt++) {
    const survivors = setup.urls.filter((url) => !deadUrls.has(url));
    if (survivors.length === 0) break;
    const url = survivors[(user + attempt) % survivors.length];
    await slots.take();
    let conn;
    try {
      conn = await open(url, lostConn.token, user);
    } catch (error) {
      slots.give();
      stats.reconnectErrors++;
      stats.lastReconnectError = error.message;
      if (/ECONNREFUSED/.test(error.message)) deadUrls.add(url);
      await sleep(100 + Math.random() * 400);
      continue;
    }
    slots.give();
    try {
      await sendAndAwaitAck(conn, `storm-${user ^ 1}`);
      stats.back++;
      stats.lastBackAt = Date.now();
      return;
    } catch (error) {
      stats.reconnectErrors++;
      stats.lastReconnectError = error.message;
      // The connection may still be open: it reconnects by itself if the server closes it.
      if (conn !== undefined && !conn.socket.destroyed) {
        conn.left = true;
        conn.socket.destroy();
      }
      await sleep(100 + Math.random() * 400);
    }
  }
  stats.gaveUp++;
}

let tokens = [];

async function connectAll() {
  const started = performance.now();
  let next = 0;
  const loop = async () => {
    while (next < tokens.length) {
      const i = next++;
      const user = setup.first + i;
      // The scale scenario's clients retry a failed connect (as real clients do), up to
      // `connectAttempts` times, 0.5 to 1.5 s apart; the storm's do not.
      for (let attempt = 1; ; attempt++) {
        try {
          await open(setup.urls[nodeOf(i)], tokens[i], user);
          break;
        } catch (error) {
          stats.lastError = error.message;
          if (attempt >= (setup.connectAttempts ?? 1)) {
            stats.failed++;
            break;
          }
          stats.retried++;
          await sleep(500 + Math.random() * 1000);
        }
      }
    }
  };
  await Promise.all(Array.from({ length: setup.concurrency }, loop));
  return { ...stats, ms: stats.lastAckAt - started };
}

/** Online connections per node URL (not left, not closed). */
function perUrl() {
  const counts = Object.fromEntries(setup.urls.map((url) => [url, 0]));
  for (const conn of connections)
    if (conn.acked && !conn.left && !conn.socket.destroyed && !conn.steady) counts[conn.url]++;
  return counts;
}

// --- Steady load: a few sender→receiver pairs, each sender sends a DM every intervalMs.
const steady = { samples: [], sent: 0, delivered: 0, errors: 0, pending: new Map(), timers: [] };

async function startSteady({ pairs, intervalMs }) {
  let seq = 0;
  const openAs = async (user, url) => {
    const conn = await open(url, await mintToken(user), -1);
    conn.steady = true;
    return conn;
  };
  for (const pair of pairs) {
    const receiver = await openAs(pair.receiver, pair.receiverUrl);
    const sender = await openAs(pair.sender, pair.senderUrl);
    receiver.onText = (payload) => {
      const match = /"content":"s(\d+)"/.exec(payload.toString());
      if (match === null) return;
      const sentAt = steady.pending.get(Number(match[1]));
      if (sentAt === undefined) return;
      steady.pending.delete(Number(match[1]));
      steady.delivered++;
      steady.samples.push(performance.now() - sentAt);
    };
    sender.onText = (payload) => {
      if (payload.indexOf(ERROR_TEXT) >= 0) steady.errors++;
    };
    // Senders start spread over the interval, not all in the same tick.
    const start = setTimeout(() => {
      steady.timers.push(
        setInterval(() => {
          const id = seq++;
          steady.pending.set(id, performance.now());
          steady.sent++;
          sender.socket.write(
            textFrame(
              JSON.stringify({ type: "direct_message", to: pair.receiver, content: `s${id}` }),
            ),
          );
        }, intervalMs),
      );
    }, Math.random() * intervalMs);
    steady.timers.push(start);
  }
}

/** Latency of the deliveries since the last take (ms), and what is still undelivered. */
function takeSteady() {
  const sorted = steady.samples.sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
  const now = performance.now();
  let late = 0;
  for (const sentAt of steady.pending.values()) if (now - sentAt > 5000) late++;
  const taken = {
    delivered: sorted.length,
    p50Ms: at(0.5),
    p99Ms: at(0.99),
    maxMs: at(1),
    sent: steady.sent,
    errors: steady.errors,
    undeliveredAfter5s: late,
  };
  steady.samples = [];
  steady.sent = 0;
  steady.errors = 0;
  return taken;
}

function leaveAll() {
  for (const timer of steady.timers) clearInterval(timer);
  const started = performance.now();
  let open = 0;
  return new Promise((resolve) => {
    const done = () => {
      if (--open === 0) resolve({ ms: performance.now() - started });
    };
    for (const conn of connections) {
      if (conn.socket.destroyed) continue;
      conn.left = true;
      open++;
      conn.socket.once("close", done);
      // Gone without a close handshake, as clients that lose their network or are killed.
      conn.socket.destroy();
    }
    if (open === 0) resolve({ ms: 0 });
  });
}

process.on("message", async (message) => {
  try {
    if (message.type === "setup") {
      setup = message;
      slots.free = setup.concurrency;
      tokens = await mintTokens();
      process.send({ type: "ready" });
    } else if (message.type === "connect") {
      process.send({ type: "connected", ...(await connectAll()) });
    } else if (message.type === "count") {
      process.send({ type: "counted", ...stats, perUrl: perUrl() });
    } else if (message.type === "steady") {
      await startSteady(message);
      process.send({ type: "steady-ready" });
    } else if (message.type === "steady-take") {
      process.send({ type: "steady-taken", ...takeSteady() });
    } else if (message.type === "leave") {
      process.send({ type: "left", ...(await leaveAll()) });
    }
  } catch (error) {
    process.send({ type: "error", message: error.stack ?? String(error) });
  }
});

process.on("disconnect", () => process.exit(0));
