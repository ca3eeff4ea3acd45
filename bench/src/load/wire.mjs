// Wire-level load-generator clients over raw `ws` sockets, one per protocol, built to cost the
// same per message whatever the server: frames are assembled by string concatenation and
// incoming frames are classified by a few byte tests, never JSON-parsed.
//
// Every message's content is 64 characters and carries its send time:
// `~` + 12-digit microseconds + `~` + 50 × `x`. The receiver reads the stamp back from the raw
// frame (the first `~`), which gives send→delivery latency without any per-message bookkeeping.
import WebSocket from "ws";

const TILDE = 0x7e;
const PAD = "x".repeat(50);
/** Deliveries and acks are a few hundred bytes: anything bigger (presence lists) is skipped unread. */
const MAX_OWN_FRAME = 2048;
const ACK = Buffer.from('"message_ack"');
const ERROR = Buffer.from('"error"');
// Both client kinds: no compression; no UTF-8 validation of incoming frames; an all-zero frame
// mask (RFC 6455 only asks for a mask, and ws skips the XOR for a zero one on both ends), so that
// neither the load generator nor any server spends time masking.
const WS_OPTIONS = {
  perMessageDeflate: false,
  skipUTF8Validation: true,
  generateMask: () => {},
  handshakeTimeout: 30_000,
};

const noop = () => {};

/** The 64-character content of a message sent at `sentAtUs` (a non-negative integer). */
export function stampedContent(sentAtUs) {
  return `~${String(sentAtUs).padStart(12, "0")}~${PAD}`;
}

/** The send time stamped into a delivery frame, or -1 when the frame carries none. */
function readStamp(frame) {
  const at = frame.indexOf(TILDE);
  if (at < 0 || at + 13 > frame.length) return -1;
  let us = 0;
  for (let i = at + 1; i <= at + 12; i++) us = us * 10 + (frame[i] - 48);
  return us;
}

class WireClient {
  /**
   * Called once per answer to a message this client sent: `true` for an ack, `false` for an error
   * frame (the message was refused, so it completes without a delivery).
   */
  onAck = noop;
  /** Called once per message delivered to this client, with the stamped send time (µs). */
  onDeliver = noop;
  errors = 0;
  lastError = "";
  /** Whether the server closed the connection after it was ready (the bench never expects it). */
  dropped = false;
  #closing = false;

  constructor(baseUrl) {
    this.baseUrl = baseUrl;
  }

  /** Resolves when the socket is closed; never rejects. */
  close() {
    const ws = this.ws;
    if (ws === undefined || ws.readyState === WebSocket.CLOSED) return Promise.resolve();
    this.#closing = true;
    return new Promise((resolve) => {
      ws.once("close", resolve);
      if (ws.readyState === WebSocket.CONNECTING) ws.terminate();
      else if (ws.readyState === WebSocket.OPEN) ws.close();
    });
  }

  noteError(text) {
    this.errors++;
    this.lastError = text.slice(0, 200);
  }

  /** A promise settled by `ready`/`fail`, failing too if the socket errors or closes first. */
  connect(url, timeoutMs) {
    this.ws = new WebSocket(url, WS_OPTIONS);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => fail(new Error("connect timeout")), timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.ws.off("close", onClose);
      };
      const fail = (error) => {
        done();
        this.ws.terminate();
        reject(error);
      };
      const onClose = (code) => fail(new Error(`closed before ready (${code})`));
      this.ready = () => {
        done();
        this.ws.once("close", (code, reason) => {
          if (this.#closing) return;
          this.dropped = true;
          this.noteError(`closed by the server: ${code} ${reason}`);
        });
        resolve();
      };
      this.ws.on("close", onClose);
      this.ws.on("error", fail);
      this.ws.on("unexpected-response", (_req, res) => fail(new Error(`HTTP ${res.statusCode}`)));
    });
  }
}

/**
 * Mrezhen's part A (and the ws-ack peer): `/ws?token=…`, JSON frames. `presence=off`: the peers
 * have no presence broadcast, so Mrezhen's clients opt out of it too (the node still tracks
 * presence); ws-ack ignores the parameter.
 */
export class PartAClient extends WireClient {
  /** Resolves once the upgrade (and so the JWT check) succeeded. */
  open(token, timeoutMs) {
    const opened = this.connect(`${this.baseUrl}/ws?token=${token}&presence=off`, timeoutMs);
    this.ws.once("open", () => this.ready());
    this.ws.on("message", (frame) => this.#onFrame(frame));
    return opened;
  }

  send(to, sentAtUs) {
    this.ws.send(`{"type":"direct_message","to":"${to}","content":"${stampedContent(sentAtUs)}"}`);
  }

  /** A message to a group (Mrezhen's group_message; its ack is a message_ack). */
  sendGroup(groupId, sentAtUs) {
    this.ws.send(
      `{"type":"group_message","groupId":"${groupId}","content":"${stampedContent(sentAtUs)}"}`,
    );
  }

  /** Mrezhen's members need no join: membership is stored (create_group), not per connection. */
  joinGroup() {
    return Promise.resolve();
  }

  #onFrame(frame) {
    if (frame.length > MAX_OWN_FRAME) return;
    const stamp = readStamp(frame);
    if (stamp >= 0) this.onDeliver(stamp);
    else if (frame.includes(ACK)) this.onAck(true);
    else if (frame.includes(ERROR)) {
      this.noteError(frame.toString());
      this.onAck(false);
    }
  }
}

/**
 * Socket.IO 5 over Engine.IO 4, websocket transport only: `0{…}` open → send `40{"token":…}` →
 * `40{…}` connected (or `44{…}` refused); `2` ping → `3` pong; events `42[…]`, acks `43<id>[…]`.
 */
export class SocketIoClient extends WireClient {
  #token = "";
  #nextAckId = 0;

  /** Resolves once the namespace CONNECT was accepted (the JWT was checked by the middleware). */
  open(token, timeoutMs) {
    this.#token = token;
    const opened = this.connect(`${this.baseUrl}/socket.io/?EIO=4&transport=websocket`, timeoutMs);
    this.ws.on("message", (frame) => this.#onFrame(frame));
    return opened;
  }

  send(to, sentAtUs) {
    const ackId = this.#nextAckId++;
    this.ws.send(
      `42${ackId}["direct_message",{"to":"${to}","content":"${stampedContent(sentAtUs)}"}]`,
    );
  }

  sendGroup(groupId, sentAtUs) {
    const ackId = this.#nextAckId++;
    this.ws.send(
      `42${ackId}["group_message",{"groupId":"${groupId}","content":"${stampedContent(sentAtUs)}"}]`,
    );
  }

  /** Joins the room `groupId`; resolves on the server's ack (before any message is sent). */
  joinGroup(groupId) {
    const ackId = this.#nextAckId++;
    const previous = this.onAck;
    return new Promise((resolve) => {
      this.onAck = () => {
        this.onAck = previous;
        resolve();
      };
      this.ws.send(`42${ackId}["join_group",{"groupId":"${groupId}"}]`);
    });
  }

  #onFrame(frame) {
    const engineType = frame[0];
    if (engineType === 0x32 /* "2" ping */) return this.ws.send("3");
    if (engineType === 0x30 /* "0" open */) return this.ws.send(`40{"token":"${this.#token}"}`);
    if (engineType !== 0x34 /* "4" message */ || frame.length > MAX_OWN_FRAME) return;
    switch (frame[1]) {
      case 0x32 /* "2" EVENT */:
        {
          const stamp = readStamp(frame);
          if (stamp >= 0) this.onDeliver(stamp);
          return;
        }
      case 0x33 /* "3" ACK */:
        if (frame.includes(ERROR)) {
          this.noteError(frame.toString());
          this.onAck(false);
        } else this.onAck(true);
        return;
      case 0x30 /* "0" CONNECT */:
        return this.ready();
      case 0x34 /* "4" CONNECT_ERROR */:
        this.noteError(frame.toString());
        this.ws.close();
        return;
    }
  }
}

/** A client of the protocol a system speaks. */
export function createClient(protocol, baseUrl) {
  return protocol === "socket.io" ? new SocketIoClient(baseUrl) : new PartAClient(baseUrl);
}
