// The floor: a bare `ws` relay speaking the subset of part A the bench uses. It verifies the JWT
// during the HTTP upgrade like Mrezhen (401 otherwise), relays `direct_message` to every open
// connection of the recipient and answers the sender with `message_ack`; `ping` gets `pong`. It
// stores nothing (no history, no offline queue, no presence), so its cost is what the message
// semantics cost on this stack before any of Mrezhen's guarantees.
//
// Env: WS_PORT, JWT_SECRET, JWT_ISSUER.
import { randomUUID } from "node:crypto";
import http from "node:http";
import { WebSocketServer } from "ws";
import { required, verifyToken } from "./auth.mjs";

const MAX_CONTENT = 5000;

/** userId -> open connections of that user */
const connections = new Map();

const server = http.createServer((req, res) => {
  if (req.method === "GET" && req.url === "/health") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(
      JSON.stringify({ status: "ok", uptime: process.uptime(), connections: wss.clients.size }),
    );
    return;
  }
  res.writeHead(404).end();
});

// 64 KiB frames, as in part A: ws closes bigger ones with 1009.
const wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 });

server.on("upgrade", (req, socket, head) => {
  const url = new URL(req.url ?? "/", "http://localhost");
  if (url.pathname !== "/ws" && url.pathname !== "/") {
    socket.end("HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n");
    return;
  }
  const bearer = req.headers.authorization?.match(/^Bearer (.+)$/)?.[1];
  verifyToken(url.searchParams.get("token") ?? bearer).then((userId) => {
    if (userId === undefined) {
      socket.end("HTTP/1.1 401 Unauthorized\r\nConnection: close\r\n\r\n");
      return;
    }
    // The client may have gone while the token was checked (verification is asynchronous).
    if (socket.destroyed) return;
    wss.handleUpgrade(req, socket, head, (ws) => attach(ws, userId));
  });
});

function attach(ws, userId) {
  let mine = connections.get(userId);
  if (mine === undefined) {
    mine = new Set();
    connections.set(userId, mine);
  }
  mine.add(ws);
  ws.on("close", () => {
    mine.delete(ws);
    if (mine.size === 0) connections.delete(userId);
  });
  ws.on("message", (data) => onFrame(ws, userId, data));
}

function onFrame(ws, from, data) {
  let frame;
  try {
    frame = JSON.parse(data.toString());
  } catch {
    return sendError(ws, "INVALID_JSON", "frame is not valid JSON");
  }
  if (frame === null || typeof frame !== "object" || Array.isArray(frame)) {
    return sendError(ws, "INVALID_FORMAT", "frame must be an object");
  }
  if (frame.type === "direct_message") return directMessage(ws, from, frame);
  if (frame.type === "ping") {
    return ws.send(JSON.stringify({ type: "pong", timestamp: new Date().toISOString() }));
  }
  if (frame.type === undefined) return sendError(ws, "MISSING_TYPE", "type is required");
  sendError(ws, "UNKNOWN_TYPE", "unknown type");
}

function directMessage(ws, from, { to, content }) {
  if (typeof to !== "string" || to === "") {
    return sendError(ws, "MISSING_RECIPIENT", "to is required");
  }
  if (typeof content !== "string" || content.trim() === "") {
    return sendError(ws, "EMPTY_CONTENT", "content is empty");
  }
  if (content.length > MAX_CONTENT) return sendError(ws, "CONTENT_TOO_LONG", "content too long");
  if (to === from) return sendError(ws, "SELF_MESSAGE", "cannot message yourself");

  const message = { id: randomUUID(), from, content, timestamp: new Date().toISOString() };
  const recipients = connections.get(to);
  if (recipients !== undefined) {
    const frame = JSON.stringify({ type: "direct_message", message });
    for (const peer of recipients) peer.send(frame);
  }
  // "queued" only mirrors part A's shape: nothing is stored (the bench never messages offline users).
  const status = recipients === undefined ? "queued" : "delivered";
  ws.send(
    JSON.stringify({
      type: "message_ack",
      messageId: message.id,
      to,
      timestamp: message.timestamp,
      status,
    }),
  );
}

function sendError(ws, code, message) {
  ws.send(JSON.stringify({ type: "error", code, message }));
}

server.listen(Number(required("WS_PORT")), "127.0.0.1");
