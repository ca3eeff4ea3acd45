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

let setup;
const connections = [];
const stats = { acked: 0, failed: 0, dropped: 0, lastError: "", lastAckAt: 0 };

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

function open(url, token) {
  const { hostname, port } = new URL(url);
  const socket = net.connect({ port: Number(port), host: hostname, localAddress: setup.address });
  const conn = { socket, buffered: EMPTY, upgraded: false, acked: false, left: false };
  conn.closedByServer = false;
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
      resolve();
    };
    socket.setNoDelay(true);
    socket.once("connect", () =>
      socket.write(
        `GET /ws?token=${token}&presence=off HTTP/1.1\r\nHost: ${hostname}:${port}\r\n` +
          "Upgrade: websocket\r\nConnection: Upgrade\r\n" +
          `Sec-WebSocket-Key: ${KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      ),
    );
    socket.on("error", (error) => fail(error));
    socket.on("close", () => {
      if (conn.acked && !conn.left) stats.dropped++;
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

async function mintTokens() {
  const key = new TextEncoder().encode(setup.secret);
  const tokens = [];
  for (let i = setup.first; i < setup.first + setup.count; i++) {
    tokens.push(
      await new SignJWT({})
        .setProtectedHeader({ alg: "HS256" })
        .setSubject(`storm-${i}`)
        .setIssuer(setup.issuer)
        .setIssuedAt()
        .setExpirationTime("6h")
        .sign(key),
    );
  }
  return tokens;
}

let tokens = [];

async function connectAll() {
  const started = performance.now();
  let next = 0;
  const loop = async () => {
    while (next < tokens.length) {
      const i = next++;
      const user = setup.first + i;
      try {
        await open(setup.urls[user % setup.urls.length], tokens[i]);
      } catch (error) {
        stats.failed++;
        stats.lastError = error.message;
      }
    }
  };
  await Promise.all(Array.from({ length: setup.concurrency }, loop));
  return { ...stats, ms: stats.lastAckAt - started };
}

function leaveAll() {
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
      tokens = await mintTokens();
      process.send({ type: "ready" });
    } else if (message.type === "connect") {
      process.send({ type: "connected", ...(await connectAll()) });
    } else if (message.type === "count") {
      process.send({ type: "counted", ...stats });
    } else if (message.type === "leave") {
      process.send({ type: "left", ...(await leaveAll()) });
    }
  } catch (error) {
    process.send({ type: "error", message: error.stack ?? String(error) });
  }
});

process.on("disconnect", () => process.exit(0));
