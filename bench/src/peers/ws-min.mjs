// The strictest floor: the least a relay on this stack can do per message. It verifies the JWT
// during the HTTP upgrade like Mrezhen and ws-ack (401 otherwise); per message it parses the
// frame (JSON.parse, to read `to`), forwards the frame it received unchanged to every open
// connection of the recipient, and answers the sender with a one-field ack,
// `{"type":"message_ack"}` (22 bytes). No id, no timestamp, no validation of the content, no
// new frame built: what is left is `ws`'s per-frame work, one parse and the system calls.
//
// Env: WS_PORT, JWT_SECRET, JWT_ISSUER.
import http from "node:http";
import { WebSocketServer } from "ws";
import { required, verifyToken } from "./auth.mjs";

const ACK = '{"type":"message_ack"}';

/** userId -> open connections of that user */
const connections = new Map();

const server = http.createServer((req, res) => {
  if (req.method === "GET" && req.url === "/health") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ status: "ok", connections: wss.clients.size }));
    return;
  }
  res.writeHead(404).end();
});

const wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 });

server.on("upgrade", (req, socket, head) => {
  const url = new URL(req.url ?? "/", "http://localhost");
  if (url.pathname !== "/ws" && url.pathname !== "/") {
    socket.end("HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n");
    return;
  }
  verifyToken(url.searchParams.get("token")).then((userId) => {
    if (userId === undefined) {
      socket.end("HTTP/1.1 401 Unauthorized\r\nConnection: close\r\n\r\n");
      return;
    }
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
  ws.on("message", (data) => {
    const text = data.toString();
    let to;
    try {
      to = JSON.parse(text).to;
    } catch {
      return;
    }
    const recipients = connections.get(to);
    if (recipients !== undefined) for (const peer of recipients) peer.send(text);
    ws.send(ACK);
  });
}

server.listen(Number(required("WS_PORT")), "127.0.0.1");
