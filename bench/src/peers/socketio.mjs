// Socket.IO 4 peer: the same direct-message semantics the idiomatic Socket.IO way. Every user joins
// a room named after its user id; `direct_message` with an ack callback is emitted to the
// recipient's room and acked. With REDIS_URL set it uses @socket.io/redis-adapter, so several
// nodes form one service (the cluster rows).
//
// Authentication is Socket.IO's own: the JWT travels in the CONNECT packet (`40{"token":…}`) and
// a namespace middleware verifies it with the same options as Mrezhen; a bad token gets
// CONNECT_ERROR. The ack is sent right after the emit: Socket.IO has no store to wait for and, on
// the Redis adapter, cannot tell whether the recipient is online without a cluster round trip, so
// the ack status is always "delivered".
//
// Groups are Socket.IO rooms: `join_group { groupId }` (acked once joined) puts the socket in the
// room, and `group_message { groupId, content }` is emitted to the room's other sockets
// (`socket.to(room)`: the sender's own socket gets no copy, as with Mrezhen, so both deliver the
// same frames) and acked. The Redis adapter carries it to the other nodes' members. Nothing is
// stored, and membership is not checked: the cheapest idiomatic Socket.IO group chat.
//
// Env: WS_PORT, JWT_SECRET, JWT_ISSUER, and for the cluster REDIS_URL, SIO_REDIS_KEY (the
// adapter's channel prefix, unique per bench run).
import { randomUUID } from "node:crypto";
import http from "node:http";
import { createAdapter } from "@socket.io/redis-adapter";
import { Redis } from "ioredis";
import { Server } from "socket.io";
import { required, verifyToken } from "./auth.mjs";

const MAX_CONTENT = 5000;

// Engine.IO takes over the requests under /socket.io/ and hands every other one to this listener.
const server = http.createServer((req, res) => {
  if (req.method === "GET" && req.url === "/health") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(
      JSON.stringify({
        status: "ok",
        uptime: process.uptime(),
        connections: io.engine.clientsCount,
      }),
    );
    return;
  }
  res.writeHead(404).end();
});

const io = new Server(server, {
  transports: ["websocket"],
  serveClient: false,
  maxHttpBufferSize: 64 * 1024,
});

if (process.env.REDIS_URL) {
  const pub = new Redis(process.env.REDIS_URL);
  const sub = pub.duplicate();
  io.adapter(createAdapter(pub, sub, { key: required("SIO_REDIS_KEY") }));
}

io.use(async (socket, next) => {
  const userId = await verifyToken(socket.handshake.auth?.token);
  if (userId === undefined) return next(new Error("unauthorized"));
  socket.data.userId = userId;
  next();
});

io.on("connection", (socket) => {
  const from = socket.data.userId;
  socket.join(from);
  socket.on("direct_message", (frame, ack) => {
    if (typeof ack !== "function") return;
    const error = invalid(frame, from);
    if (error !== undefined) return ack({ type: "error", code: error });
    const message = {
      id: randomUUID(),
      from,
      content: frame.content,
      timestamp: new Date().toISOString(),
    };
    io.to(frame.to).emit("direct_message", { message });
    ack({ messageId: message.id, to: frame.to, timestamp: message.timestamp, status: "delivered" });
  });
  socket.on("join_group", async (frame, ack) => {
    if (typeof ack !== "function") return;
    if (typeof frame?.groupId !== "string" || frame.groupId === "")
      return ack({ type: "error", code: "INVALID_FORMAT" });
    await socket.join(frame.groupId);
    ack({ groupId: frame.groupId });
  });
  socket.on("group_message", (frame, ack) => {
    if (typeof ack !== "function") return;
    const { groupId, content } = frame ?? {};
    if (typeof groupId !== "string" || groupId === "")
      return ack({ type: "error", code: "INVALID_FORMAT" });
    if (typeof content !== "string" || content.trim() === "")
      return ack({ type: "error", code: "EMPTY_CONTENT" });
    if (content.length > MAX_CONTENT) return ack({ type: "error", code: "CONTENT_TOO_LONG" });
    const message = {
      id: randomUUID(),
      groupId,
      from,
      content,
      timestamp: new Date().toISOString(),
    };
    socket.to(groupId).emit("group_message", { groupId, message });
    ack({ messageId: message.id, groupId, timestamp: message.timestamp, status: "delivered" });
  });
});

function invalid(frame, from) {
  if (frame === null || typeof frame !== "object") return "INVALID_FORMAT";
  const { to, content } = frame;
  if (typeof to !== "string" || to === "") return "MISSING_RECIPIENT";
  if (typeof content !== "string" || content.trim() === "") return "EMPTY_CONTENT";
  if (content.length > MAX_CONTENT) return "CONTENT_TOO_LONG";
  if (to === from) return "SELF_MESSAGE";
  return undefined;
}

server.listen(Number(required("WS_PORT")), "127.0.0.1");
