import type { Socket } from "node:net";
import { CloseCode } from "@mrezhen/protocol";
import WebSocket from "ws";
import type { Principal } from "../auth/token.js";
import type { Logger } from "../chat/ports.js";
import type { ChatService } from "../chat/service.js";
import { type PresenceMode, Session } from "../chat/session.js";
import { WarningSummary } from "../chat/warning-summary.js";
import type { NodeMetrics } from "./metrics.js";
import { UnsentBudget } from "./unsent-budget.js";
import { WriteBatcher, WsTransport } from "./ws-transport.js";

/**
 * The open WebSocket connections of this node: wires each socket to a chat Session, beats the
 * heartbeat, and closes them all on drain.
 */
const kSession = Symbol("mrezhen.session");
const kTransport = Symbol("mrezhen.transport");

/** A ws socket that carries its session and transport, for the shared listeners. */
type TaggedSocket = WebSocket & { [kSession]?: Session; [kTransport]?: WsTransport };

function onPong(this: TaggedSocket, payload: Buffer): void {
  this[kTransport]?.onPong(payload);
}

/** A WebSocket ping from the client (ws's own answer is off: see MAX_PONGS_WAITING). */
function onPing(this: TaggedSocket, payload: Buffer): void {
  this[kTransport]?.answerPing(payload);
}

function onError(this: TaggedSocket, error: Error): void {
  this[kSession]?.log.debug({ err: error }, "socket error");
}

const kSlotUser = Symbol("mrezhen.slotUser");

/** A TCP socket that holds one of its user's connection slots, until it closes. */
type SlotSocket = Socket & { [kSlotUser]?: string | undefined };

/** What one node lets its clients hold (see Config.limits). */
export interface ConnectionLimits {
  readonly connectionsPerUser: number;
  readonly connections: number;
  readonly unsentBytes: number;
}

/** Whether an authenticated upgrade may proceed, or which limit it hit. */
export type Admission = "admitted" | "user_limit" | "node_limit";

/** What a client chose in its connection URL. */
export interface ConnectionOptions {
  /** `since=N`: acknowledged delivery from inbox position N. */
  readonly since: number | undefined;
  /** `presence=on` (the default: "all"), `contacts` or `off`. */
  readonly presence: PresenceMode;
}

/** The close reason for a binary frame (a close reason has at most 123 bytes). */
const BINARY_REFUSED = "binary frames are not supported: send JSON in text frames";

/** How long the wire must stay silent before a drain closes connections. */
const QUIET_MS = 100;

/**
 * The heartbeat visits a slice of the connections every HEARTBEAT_TICK_MS, so that each is
 * pinged once per interval. Pinging them all at once stalled the node: with 2,000 connections,
 * a burst of 2,000 pings and then 2,000 pongs delayed every message behind it by tens of
 * milliseconds, every interval (the bench's p99).
 */
const HEARTBEAT_TICK_MS = 250;

/**
 * A heartbeat tick that runs this much later than due means the node itself was behind (a
 * connect storm, a long GC): a pong that came meanwhile may still sit unread in its socket, so a
 * missing pong proves nothing about the peer then. At least 200 ms, so that ordinary jitter on
 * a busy machine does not count.
 */
const BEHIND_MIN_MS = 200;

export class Connections {
  private readonly open = new Set<WsTransport>();
  /** close() handlers still unregistering presence; drain waits for them. */
  private readonly closing = new Set<Promise<void>>();
  private sequence = 0;
  private readonly batcher: WriteBatcher;
  private readonly heartbeat: NodeJS.Timeout;
  /** Ticks per heartbeat interval: each tick visits 1/slices of the connections. */
  private readonly heartbeatSlices: number;
  /** Where the heartbeat's pass over `open` stands (a live Set iterator). */
  private heartbeatCursor: Iterator<WsTransport> | undefined;
  /** The tick of the current pass (0 starts one), and connections to visit per tick in it. */
  private heartbeatTick = 0;
  private heartbeatQuota = 0;
  private readonly heartbeatTickMs: number;
  /** A connection gets at least this long to answer a heartbeat ping (the interval less a tick). */
  private readonly pongWaitMs: number;
  /** When the last tick ran, and when a tick last found the node behind (performance.now()). */
  private lastBeatAt = performance.now();
  private behindAt = Number.NEGATIVE_INFINITY;
  /** Connections the heartbeat closed, logged as one line a second with their count. */
  private readonly heartbeatClosures: WarningSummary;
  /**
   * Connection slots per user, and in all, held from admission until the TCP socket closes (see
   * admit). Counted here, on this node, synchronously: a burst of upgrades cannot all slip in
   * before the first one is counted, as they could against a count kept in Redis.
   */
  private readonly slotsPerUser = new Map<string, number>();
  private slots = 0;
  private readonly unsent: UnsentBudget;

  constructor(
    private readonly chat: ChatService,
    private readonly nodeId: string,
    private readonly log: Logger,
    private readonly metrics: NodeMetrics,
    heartbeatIntervalMs: number,
    private readonly limits: ConnectionLimits,
  ) {
    this.unsent = new UnsentBudget(limits.unsentBytes, metrics, log);
    this.batcher = new WriteBatcher(this.unsent);
    this.heartbeatSlices = Math.max(1, Math.round(heartbeatIntervalMs / HEARTBEAT_TICK_MS));
    this.heartbeatTickMs = heartbeatIntervalMs / this.heartbeatSlices;
    this.pongWaitMs = heartbeatIntervalMs - this.heartbeatTickMs;
    this.heartbeatClosures = new WarningSummary(
      log,
      "heartbeat closed connections that answered no ping for two whole intervals",
    );
    this.heartbeat = setInterval(() => this.beat(), this.heartbeatTickMs);
    this.heartbeat.unref();
  }

  get size(): number {
    return this.open.size;
  }

  /**
   * Takes a connection slot for an authenticated upgrade, before the WebSocket handshake, or
   * says which limit refuses it. The slot is tied to the TCP socket and given back when that
   * closes, whatever happens: the handshake fails, the client goes away, or the WebSocket closes.
   */
  admit(userId: string, tcp: Socket): Admission {
    if (this.slots >= this.limits.connections) return "node_limit";
    const held = this.slotsPerUser.get(userId) ?? 0;
    if (held >= this.limits.connectionsPerUser) return "user_limit";
    this.slotsPerUser.set(userId, held + 1);
    this.slots++;
    const tagged = tcp as SlotSocket;
    tagged[kSlotUser] = userId;
    // `on`, not `once`: a socket closes once and releaseSlot is idempotent, while `once` keeps a
    // wrapper state object and a bound function (about 90 bytes) alive per idle connection.
    tcp.on("close", this.releaseSlot);
    return "admitted";
  }

  // One function for every socket (no closure per connection): the user is on the socket.
  private readonly releaseSlot = (() => {
    const connections = this;
    return function (this: SlotSocket): void {
      const userId = this[kSlotUser];
      if (userId === undefined) return;
      this[kSlotUser] = undefined;
      connections.slots--;
      const held = connections.slotsPerUser.get(userId) ?? 0;
      if (held <= 1) connections.slotsPerUser.delete(userId);
      else connections.slotsPerUser.set(userId, held - 1);
    };
  })();

  /** Wires an authenticated socket to a new session; `since` opts it in to acknowledged delivery. */
  accept(
    socket: WebSocket,
    tcp: Socket,
    principal: Principal,
    options: ConnectionOptions,
    clientIp: () => string,
  ): void {
    const connId = `${this.nodeId}.${(++this.sequence).toString(36)}`;
    const transport = new WsTransport(socket, tcp, this.batcher, this.metrics);
    const session = new Session(
      connId,
      principal.userId,
      principal.name,
      principal.expiresAt,
      options.since,
      options.presence,
      transport,
      this.log,
      principal.issuedAt,
    );
    this.open.add(transport);
    if (session.logs("debug")) session.log.debug({ ip: clientIp() }, "upgrade accepted");

    // One set of listener functions for every socket, which finds its session through the
    // socket: per-connection closures would cost memory on every idle connection.
    const tagged = socket as TaggedSocket;
    tagged[kSession] = session;
    tagged[kTransport] = transport;
    socket.on("message", this.onMessage);
    socket.on("pong", onPong);
    socket.on("ping", onPing);
    socket.on("close", this.onClose);
    // ws closes the socket itself on protocol errors (1009 for an oversized frame, 1002, 1007):
    // the error is the client's, so it is logged quietly and never rethrown. This replaces
    // @fastify/websocket's listener, whose closure would keep the upgrade's request and reply
    // objects alive for as long as the connection lives.
    socket.removeAllListeners("error");
    socket.on("error", onError);
    void this.chat.open(session);
  }

  // Field initialisers run before the constructor's parameter properties are set: these read
  // `connections.chat` when called, never while being built.
  private readonly onMessage = (() => {
    const connections = this;
    return function (this: TaggedSocket, data: Buffer, isBinary: boolean): void {
      // A frame that arrives after our close frame is dropped unread: it was neither stored nor
      // acked, so the client sends it again after reconnecting, and nothing is lost or doubled.
      const session = this[kSession];
      if (session === undefined || this.readyState !== WebSocket.OPEN) return;
      if (isBinary) {
        // The protocol is JSON in text frames. A binary frame used to be decoded as UTF-8 and
        // handled like text (invalid bytes silently became U+FFFD); 1003 says what is wrong.
        this.close(CloseCode.UNSUPPORTED_DATA, BINARY_REFUSED);
        return;
      }
      connections.chat.handleFrame(session, data.toString("utf8"));
    };
  })();

  private readonly onClose = (() => {
    const connections = this;
    return function (this: TaggedSocket, code: number): void {
      const session = this[kSession];
      const transport = this[kTransport];
      if (session === undefined || transport === undefined) return;
      connections.open.delete(transport);
      connections.unsent.forget(transport);
      transport.onClosed();
      const done = connections.chat
        .closed(session, code)
        .finally(() => connections.closing.delete(done));
      connections.closing.add(done);
    };
  })();

  /**
   * Pings the next slice of connections, terminating those that did not answer their previous
   * ping. A pass over all of them takes exactly `heartbeatSlices` ticks, so each is pinged once
   * per interval however few there are. The Set iterator is live: connections closed during a
   * pass are skipped, and those opened during it are visited at its end (the last tick takes
   * whatever is left).
   *
   * A live but slow peer is not a dead one. A ping counts as missed only when it went out at
   * least `pongWaitMs` ago (where a connection stands in a pass moves as others open and close:
   * in a storm, one pinged at the end of a pass could be reached again a few seconds later), and
   * only when this node was not behind since (then its pong may be sitting unread). A connection
   * is terminated at its second missed ping in a row: a client process saturated by its own
   * connect storm answered late for a whole interval (thousands of live connections closed in
   * the benchmark with 5 s intervals), and gets a second one. A dead peer is thus closed two to
   * three intervals after its last pong. Terminations are logged at warn, one line a second
   * with their count.
   */
  private beat(): void {
    const now = performance.now();
    if (
      now - this.lastBeatAt - this.heartbeatTickMs >
      Math.max(BEHIND_MIN_MS, this.heartbeatTickMs)
    )
      this.behindAt = now;
    this.lastBeatAt = now;
    if (this.heartbeatTick === 0) {
      this.heartbeatCursor = this.open.values();
      this.heartbeatQuota = Math.ceil(this.open.size / this.heartbeatSlices);
    }
    this.heartbeatTick = (this.heartbeatTick + 1) % this.heartbeatSlices;
    const lastTick = this.heartbeatTick === 0;
    let terminated = 0;
    for (let visited = 0; lastTick || visited < this.heartbeatQuota; visited++) {
      const next = this.heartbeatCursor?.next();
      if (next === undefined || next.done) break;
      const transport = next.value;
      const pingedAt = transport.pingedAt;
      if (pingedAt !== 0) {
        if (now - pingedAt < this.pongWaitMs) continue; // reached early: judged next pass
        if (this.behindAt < pingedAt) {
          if (transport.missedPing) {
            transport.terminate();
            terminated++;
            continue;
          }
          transport.missedPing = true;
        }
      }
      transport.pingedAt = now;
      transport.ping();
    }
    if (terminated > 0) this.heartbeatClosures.note(undefined, terminated);
  }

  /** Writes the pending summary line now (at shutdown). */
  flushWarnings(): void {
    this.heartbeatClosures.flush();
  }

  /**
   * Drain: new frames are refused with UNAVAILABLE while the handlers already running finish,
   * until no frame has arrived for QUIET_MS, so every frame the clients sent before the drain gets
   * an ack or an error; then every connection is closed with 1012 so
   * clients reconnect to another node, and presence is unregistered. Frames still on the wire
   * after our close frame are never read: not stored, not acked, and the close tells the client
   * to resend them. Bounded by `deadline` (ms since the epoch).
   */
  async drain(deadline: number): Promise<void> {
    clearInterval(this.heartbeat);
    this.chat.startDraining();
    await beforeDeadline(this.quiet(), deadline);
    await beforeDeadline(this.chat.whenIdle(), deadline);
    for (const transport of this.open)
      transport.close(CloseCode.SERVICE_RESTART, "service restart");
    await beforeDeadline(this.allClosed(), deadline);
    for (const transport of this.open) transport.terminate();
    this.unsent.stop();
    await beforeDeadline(Promise.all(this.closing), deadline);
  }

  /** Resolves once no frame has been read for QUIET_MS: what clients sent before the drain is answered. */
  private async quiet(): Promise<void> {
    while (this.chat.quietForMs() < QUIET_MS)
      await new Promise((resolve) => setTimeout(resolve, 20));
  }

  private async allClosed(): Promise<void> {
    while (this.open.size > 0) await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

async function beforeDeadline(work: Promise<unknown>, deadline: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
  });
  await Promise.race([work, timeout]);
  clearTimeout(timer);
}
