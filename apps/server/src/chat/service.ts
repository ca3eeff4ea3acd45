import { randomUUID } from "node:crypto";
import {
  type AppendInput,
  type AppendResult,
  type Engine,
  EngineFeatureUnavailableError,
  EngineUnavailableError,
  GroupRefusedError,
  type QueuedMessage,
  type QuotaOptions,
  type RateRefusal,
} from "@mrezhen/engine";
import {
  type ClientCommand,
  CloseCode,
  conversationsWithGroupsFrame,
  type DirectMessageCommand,
  directMessageFrame,
  ErrorCode,
  type ErrorDetails,
  encodeMessage,
  errorFrame,
  type GetHistoryCommand,
  type GroupCommand,
  type GroupMessageCommand,
  groupFrame,
  groupHistoryFrame,
  groupMessageAckFrame,
  groupMessageFrame,
  groupsFrame,
  groupTypingFrame,
  type LimitName,
  messageAckFrame,
  messageHistoryFrame,
  onlineUsersFrame,
  type ProtocolError,
  parseClientFrame,
  pongFrame,
  readByFrame,
  refreshedFrame,
  syncedFrame,
  type TypingCommand,
  tokenExpiringFrame,
  typingFrame,
  userIdProblem,
} from "@mrezhen/protocol";
import { Hub } from "./hub.js";
import { isoTimestamp } from "./iso-time.js";
import {
  type ChatEvents,
  type ChatMetrics,
  isTokenRefused,
  type Logger,
  noMetrics,
  type TokenCheck,
} from "./ports.js";
import { ReceiptWindow } from "./receipt-window.js";
import type { Session } from "./session.js";
import { TokenDeadlines } from "./token-deadlines.js";
import { WarningSummary } from "./warning-summary.js";

export interface ChatOptions {
  readonly engine: Engine;
  readonly log: Logger;
  readonly rateLimit: { readonly limit: number; readonly windowMs: number };
  /** The engine's quotas, for the text of a refusal (the engine enforces them). */
  readonly quotas?: QuotaOptions;
  /** Reads per second per user on this node (READ_RATE_LIMIT). Default {@link READS_PER_SECOND}. */
  readonly readRateLimit?: number;
  /** The clock (ms since the epoch); tests fake it. */
  readonly now?: () => number;
  readonly metrics?: ChatMetrics;
  /** See HubOptions; default DEFAULT_PRESENCE_COALESCE_MS. */
  readonly presenceCoalesceMs?: number;
  /** Verifies `refresh` tokens; without it a refresh fails with INTERNAL_ERROR. */
  readonly tokens?: TokenCheck;
  /** TOKEN_EXPIRING_NOTICE_MS; default DEFAULT_TOKEN_EXPIRING_NOTICE_MS. */
  readonly tokenExpiringNoticeMs?: number;
  /**
   * TOKEN_SWEEP_INTERVAL_MS, the interval expireTokens() is called at; default 1000. Deadlines
   * are kept in buckets this wide (see TokenDeadlines).
   */
  readonly tokenSweepIntervalMs?: number;
  /** Told of stored messages and presence changes (webhooks); absent: nothing extra is done. */
  readonly events?: ChatEvents;
}

/** The default TOKEN_EXPIRING_NOTICE_MS (see config.ts). */
export const DEFAULT_TOKEN_EXPIRING_NOTICE_MS = 30_000;
/**
 * One `refresh` per second per connection: a client needs one per token lifetime, and each costs
 * a signature check (tens of µs, an RSA one more), which a flood must not turn into a CPU sink.
 */
export const REFRESH_INTERVAL_MS = 1000;

/** A send of the server API: as `from`, with every guarantee of a WebSocket send. */
export interface SendAsInput {
  readonly from: string;
  readonly to: string;
  readonly content: string;
  readonly clientMsgId?: string | undefined;
  /**
   * Count the send against the sender's rate limit and daily quotas, as a WebSocket send is.
   * Off by default: the backend is trusted, and its bots and notices must not be refused (nor
   * eat the user's own budget).
   */
  readonly applyLimits?: boolean | undefined;
}

/** The answer to an API send: the ack's fields, or the error a WebSocket send would have got. */
export type SendAsResult =
  | {
      readonly ok: true;
      readonly ack: {
        readonly messageId: string;
        readonly to: string;
        readonly timestamp: string;
        readonly status: "delivered" | "queued";
        readonly seq: number;
        readonly position: number;
        readonly clientMsgId?: string;
        readonly duplicate: boolean;
      };
    }
  | {
      readonly ok: false;
      readonly error: ProtocolError;
      readonly details?: ErrorDetails;
    };

/**
 * The sending connection of an API send: no connection has it (connection ids are
 * `<NODE_ID>.<n>`), so every open connection of the sender gets a copy, as other devices do.
 */
export const API_CONNECTION_ID = "api";

/**
 * One second: a user's presence reaches each listener at most once a second, instead of once
 * per connect and disconnect (a reconnecting or flapping client made every listener pay for
 * each). A real change still shows at once (the first of a window), and a merged one within
 * about 1.25 s, well inside what a person notices in an online dot and far below the ~12 s a
 * crashed node takes to be noticed.
 */
export const DEFAULT_PRESENCE_COALESCE_MS = 1000;

/** Invalid frames tolerated per window before the connection is closed with 1008. */
export const INVALID_FRAME_LIMIT = 20;
export const INVALID_FRAME_WINDOW_MS = 10_000;
/** Frames waiting behind a slow one before the connection stops being read (TCP backpressure). */
export const BACKLOG_PAUSE_AT = 32;
/**
 * Typing frames relayed per user per second, over all of the user's connections on this node;
 * more are dropped (they are ephemeral).
 */
export const TYPING_PER_SECOND = 4;
/** The default READ_RATE_LIMIT. */
export const READS_PER_SECOND = 20;
/** Entries read per engine call during a replay (a sync, or the offline-queue flush). */
export const SYNC_PAGE = 500;
/** A replay page also ends at this many characters of stored messages. */
export const REPLAY_PAGE_SIZE = 64 * 1024;
/**
 * Replay pages on the wire and not yet confirmed by the client (see ReceiptWindow): with 64 KiB
 * pages, at most about 256 KiB sit in buffers per replaying connection, far below the
 * slow-reader limit, while a link with 50 ms of round trip still moves about 5 MB/s.
 */
export const REPLAY_PAGES_IN_FLIGHT = 4;

/**
 * The chat core: connection lifecycle and the handlers of every client frame. It speaks to the
 * engine ports and to sessions' transports only; nothing here knows about sockets or Redis.
 */
export class ChatService {
  readonly hub: Hub;
  private readonly engine: Engine;
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly metrics: ChatMetrics;
  private readonly limitTexts: Readonly<Record<LimitName, string>>;
  private readonly readRateLimit: number;
  private readonly tokens: TokenCheck | undefined;
  private readonly noticeMs: number;
  /** The open sessions by their next token deadline (see expireTokens). */
  private readonly tokenDeadlines: TokenDeadlines<Session>;
  private readonly events: ChatEvents | undefined;
  /** Handlers still running (for drain). */
  private inFlight = 0;
  /** Set when the node drains: new frames are refused, so every client gets an answer. */
  private draining = false;
  /** When a frame was last read during a drain (performance.now()). */
  private lastFrameAt = 0;
  private idle: (() => void) | undefined;
  /**
   * Engine failures while bringing connections online or unregistering them come in storms (a
   * Redis outage fails every connection at once): one summary line a second, not one each. The
   * unregisters themselves are not lost: the engine reconciles presence when Redis is back.
   */
  private readonly onlineFailures: WarningSummary;
  private readonly unregisterFailures: WarningSummary;

  constructor(options: ChatOptions) {
    this.engine = options.engine;
    this.log = options.log;
    this.now = options.now ?? Date.now;
    this.metrics = options.metrics ?? noMetrics;
    this.onlineFailures = new WarningSummary(
      this.log,
      "could not bring connections online (closed with 1013: clients retry)",
    );
    this.unregisterFailures = new WarningSummary(
      this.log,
      "could not unregister connections now (presence is reconciled when Redis is back)",
    );
    this.events = options.events;
    this.hub = new Hub(
      this.engine.broker,
      this.engine.messages,
      this.engine.groups,
      this.engine.presence,
      this.log,
      this.metrics,
      {
        presenceCoalesceMs: options.presenceCoalesceMs ?? DEFAULT_PRESENCE_COALESCE_MS,
        events: options.events,
      },
    );
    const { limit, windowMs } = options.rateLimit;
    this.readRateLimit = options.readRateLimit ?? READS_PER_SECOND;
    this.tokens = options.tokens;
    this.noticeMs = options.tokenExpiringNoticeMs ?? DEFAULT_TOKEN_EXPIRING_NOTICE_MS;
    this.tokenDeadlines = new TokenDeadlines(options.tokenSweepIntervalMs ?? 1000, this.now());
    const quotas = options.quotas;
    this.limitTexts = {
      messages: `Rate limit exceeded (at most ${limit} messages per ${windowMs} ms)`,
      new_conversations_per_day: `Daily quota exceeded (at most ${quotas?.newConversationsPerDay ?? "a set number of"} new conversations per UTC day; messages to people you already talk with still go through)`,
      bytes_per_day: `Daily quota exceeded (at most ${quotas?.bytesPerDay ?? "a set number of"} bytes of stored messages per UTC day)`,
      reads: `Too many reads (at most ${this.readRateLimit} get_history, get_conversations and get_online_users per second)`,
      refresh: `Too many refreshes (at most one per ${REFRESH_INTERVAL_MS} ms per connection)`,
    };
  }

  // ---- Connection lifecycle -------------------------------------------------------------

  /**
   * Brings a new session online: routes its user's events here, registers presence, then
   * flushes the user's offline queue before any live message. A session that cannot be brought
   * online (engine unavailable) is closed with 1013 so that the client retries.
   */
  open(session: Session): Promise<void> {
    session.setToken(session.expiresAt, this.now(), this.noticeMs, session.issuedAt);
    this.tokenDeadlines.schedule(session);
    session.opened = this.bringOnline(session).finally(() => {
      session.opened = OPENED; // a settled promise per idle connection is memory for nothing
    });
    return session.opened;
  }

  private async bringOnline(session: Session): Promise<void> {
    try {
      await this.hub.add(session);
      if (session.isClosed) return;
      // The registration and a contacts session's reads at once, in one write to Redis: the
      // registration is queued first, so the reads issued after it in this turn leave with its
      // batch (RedisPresenceStore.enqueue). Both settle before either failure is acted on: a
      // connection registered must be known as such, whatever happened to the reads.
      const [registered, watched] = await Promise.allSettled([
        this.engine.presence.connect(session.userId),
        this.hub.watchContacts(session),
      ]);
      if (registered.status === "rejected") throw registered.reason;
      session.registered = true;
      if (watched.status === "rejected") throw watched.reason;
      if (session.isClosed) return;
      const registration = registered.value;
      if (session.since !== undefined) {
        const replayed = await this.replay(session, session.since);
        if (session.logs("info")) {
          session.log.info(
            { since: session.since, replayedUpTo: replayed },
            "connected (acknowledged delivery)",
          );
        }
      } else {
        // No read when the engine found the queue empty in the step that registered the
        // connection: nothing is queued for a user with a registered connection, so the read
        // would find nothing (a read per connect was a script per connect, for most connects an
        // empty one). Were this node swept as dead meanwhile, what is queued for the user then
        // waits for the next connection, as anything queued after a flush does.
        const flushed = registration.queueMayHoldMessages
          ? await this.flushQueue(session)
          : this.nothingToFlush(session);
        this.metrics.queueFlushed(flushed);
        if (session.logs("info")) session.log.info({ queued: flushed }, "connected");
      }
      this.handleBacklog(session);
    } catch (error) {
      if (session.logs("debug"))
        session.log.debug({ err: error }, "could not bring the connection online");
      this.onlineFailures.note(error);
      session.close(CloseCode.TRY_AGAIN_LATER, "service unavailable, retry");
    }
  }

  /** The session's connection closed: unregisters it once open() has settled. */
  async closed(session: Session, code: number): Promise<void> {
    session.state = "closed";
    this.tokenDeadlines.unschedule(session);
    await session.opened;
    this.hub.remove(session);
    try {
      if (session.registered) await this.engine.presence.disconnect(session.userId);
      await this.hub.release(session.userId);
    } catch (error) {
      if (session.logs("debug"))
        session.log.debug({ err: error }, "could not unregister the connection");
      this.unregisterFailures.note(error);
    }
    if (session.logs("info")) session.log.info({ code }, "disconnected");
  }

  /**
   * Sends the user's offline queue (part A), paced by what the client confirms it received, then
   * the live messages that arrived meanwhile. A queued message leaves the queue only once its
   * page was confirmed: a connection cut, or a node crash, in the middle of the flush leaves the
   * rest queued for the next connection. Returns how many messages were sent.
   */
  private async flushQueue(session: Session): Promise<number> {
    const { messages } = this.engine;
    const window = new ReceiptWindow(session.transport, REPLAY_PAGES_IN_FLIGHT);
    const sent = new Set<string>();
    let after = 0;
    let removedUpTo = 0;
    let open = true;
    while (open) {
      const page = await messages.readQueued(session.userId, after, SYNC_PAGE, REPLAY_PAGE_SIZE);
      if (page.length === 0 || session.isClosed) break;
      for (const entry of page) {
        session.send(
          entry.groupId === undefined
            ? directMessageFrame(entry.messageJson, entry.position, true)
            : groupMessageFrame(entry.groupId, entry.messageJson, entry.position, true),
        );
        sent.add(entry.messageId);
      }
      after = (page.at(-1) as QueuedMessage).position;
      open = await window.endPage(after);
      if (window.confirmedUpTo > removedUpTo) {
        removedUpTo = window.confirmedUpTo;
        await this.removeQueued(session, removedUpTo);
      }
    }
    // Live messages may flow now: every queued frame is written before them.
    session.endReplay((messageId) => sent.has(messageId));
    if (open && (await window.drain()) && window.confirmedUpTo > removedUpTo)
      await this.removeQueued(session, window.confirmedUpTo);
    return sent.size;
  }

  /** Ends the flush of an empty queue: live messages may flow now. Returns 0 (messages sent). */
  private nothingToFlush(session: Session): number {
    session.endReplay(nothingSent);
    return 0;
  }

  /**
   * Removes confirmed messages from the queue. A failure (Redis down) is logged, not fatal: the
   * messages were delivered, and the worst outcome is that the next connection gets them again.
   */
  private async removeQueued(session: Session, upTo: number): Promise<void> {
    try {
      await this.engine.messages.removeQueued(session.userId, upTo);
    } catch (error) {
      session.log.warn(
        { err: error, upTo },
        "could not remove delivered messages from the offline queue; the next connection may get them again",
      );
    }
  }

  /**
   * Sends the inbox after `since` (B2): every entry in position order, then the latest receipts,
   * then `synced`, then the live messages that arrived meanwhile and were not part of the replay.
   * Returns the position the client is synced to.
   */
  private async replay(session: Session, since: number): Promise<number> {
    let after = since;
    let newest = since;
    let trimmed: { from: number; to: number } | undefined;
    const window = new ReceiptWindow(session.transport, REPLAY_PAGES_IN_FLIGHT);
    for (;;) {
      const page = await this.engine.messages.readInbox(
        session.userId,
        after,
        SYNC_PAGE,
        REPLAY_PAGE_SIZE,
      );
      newest = page.newest;
      if (
        trimmed === undefined &&
        after === since &&
        since + 1 < page.oldest &&
        since < page.newest
      ) {
        // Retention removed positions the client has not seen: say so rather than skip them.
        trimmed = { from: since + 1, to: page.oldest - 1 };
        after = page.oldest - 1;
      }
      for (const entry of page.entries)
        session.send(
          entry.groupId === undefined
            ? directMessageFrame(entry.messageJson, entry.position, false)
            : groupMessageFrame(entry.groupId, entry.messageJson, entry.position, false),
        );
      const last = page.entries.at(-1)?.position;
      if (last === undefined) break;
      after = last;
      if (last >= page.newest || session.isClosed) break;
      // Nothing to remove here: the inbox keeps every entry, and the client acks its own cursor.
      if (!(await window.endPage(after))) break;
    }
    for (const receipt of await this.engine.messages.receipts(session.userId))
      session.send(receipt);
    // Never report a position beyond the newest one: a client that is ahead of the server
    // (whose inbox was lost, e.g. a Redis without persistence) must move its cursor back, or it
    // would skip the new messages as already seen.
    const syncedTo = Math.min(after, newest);
    session.send(syncedFrame(syncedTo, trimmed));
    session.endReplay((_messageId, position) => position <= syncedTo);
    return syncedTo;
  }

  /**
   * Run periodically (TOKEN_SWEEP_INTERVAL_MS): tells sessions whose token expires soon
   * (`token_expiring`, once per token, so that the client can `refresh`), and closes those whose
   * token expired (`UNAUTHORIZED`, then 4001). Visits only the sessions due (TokenDeadlines): a
   * pass over every session each interval cost an idle node CPU per connection.
   */
  expireTokens(): void {
    const now = this.now();
    for (const session of this.tokenDeadlines.due(now)) {
      if (session.isClosed) continue;
      if (session.expiresAt <= now) {
        this.sendError(
          session,
          ErrorCode.UNAUTHORIZED,
          "The token expired; reconnect with a fresh one.",
        );
        session.close(CloseCode.UNAUTHORIZED, "token expired");
        continue;
      }
      if (session.expiringNoticeAt !== 0 && session.expiringNoticeAt <= now) {
        session.expiringNoticeAt = 0;
        session.send(tokenExpiringFrame(Math.floor(session.expiresAt / 1000)));
      }
      this.tokenDeadlines.schedule(session);
    }
  }

  /** Writes the pending summary lines now (at shutdown). */
  flushWarnings(): void {
    this.onlineFailures.flush();
    this.unregisterFailures.flush();
  }

  /**
   * Starts refusing new frames with UNAVAILABLE ("resend after reconnecting"), so that during a
   * drain every frame read gets an answer: handled and acked, or refused. Handlers already
   * running finish (see whenIdle).
   */
  startDraining(): void {
    this.draining = true;
    this.lastFrameAt = performance.now();
  }

  /** Milliseconds since the last frame was read during the drain, so it can wait for the wire to go quiet. */
  quietForMs(): number {
    return performance.now() - this.lastFrameAt;
  }

  /** Resolves when no handler is running (used by drain, bounded by the caller). */
  whenIdle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => {
      this.idle = resolve;
    });
  }

  // ---- Frames -----------------------------------------------------------------------------

  /**
   * Handles one text frame. Frames of a session are handled one at a time, in arrival order: a
   * frame that needs the engine holds back the ones after it (and, past a few, the transport
   * stops reading), so acks and stored order follow send order.
   */
  handleFrame(session: Session, text: string): void {
    if (this.draining) this.lastFrameAt = performance.now();
    if (session.busy) {
      session.backlog ??= [];
      session.backlog.push(text);
      if (session.backlog.length === BACKLOG_PAUSE_AT) session.transport.pause();
      return;
    }
    this.dispatch(session, text);
  }

  private dispatch(session: Session, text: string): void {
    if (this.draining) {
      this.sendError(
        session,
        ErrorCode.UNAVAILABLE,
        "This node is restarting; reconnect and send it again.",
      );
      return;
    }
    const parsed = parseClientFrame(text);
    if (!parsed.ok) {
      this.metrics.frameIn("invalid");
      this.refuse(session, parsed.error);
      return;
    }
    this.metrics.frameIn(parsed.command.type);
    const pending = this.run(session, parsed.command);
    if (pending === undefined) return;
    session.busy = true;
    this.inFlight++;
    pending.then(
      () => this.settle(session),
      (error: unknown) => {
        this.failRequest(session, error, parsed.command);
        this.settle(session);
      },
    );
  }

  /** Runs a command; returns a promise only when it needs the engine. */
  private run(session: Session, command: ClientCommand): Promise<void> | undefined {
    switch (command.type) {
      case "ping":
        session.send(pongFrame(isoTimestamp(this.now())));
        return undefined;
      case "direct_message":
        return this.directMessage(session, command);
      case "get_history":
        if (!this.mayRead(session)) return undefined;
        if ("groupId" in command) return this.group(session, command);
        return this.history(session, command);
      case "get_online_users":
        if (!this.mayRead(session)) return undefined;
        if (command.users !== undefined) {
          session.send(onlineUsersFrame(this.hub.whichOnline(command.users)));
          return undefined;
        }
        return this.engine.presence
          .onlineUsers()
          .then((users) => session.send(onlineUsersFrame(users)));
      case "ack":
        return this.engine.messages.acknowledge(session.userId, command.upTo);
      case "sync":
        session.beginSync();
        return this.replay(session, command.since).then(() => undefined);
      case "mark_read":
        if ("groupId" in command) return this.group(session, command);
        return this.engine.messages.markRead(session.userId, command.with, command.upTo);
      case "typing":
        if ("groupId" in command) return this.group(session, command);
        return this.typing(session, command);
      case "get_conversations":
        if (!this.mayRead(session)) return undefined;
        return this.engine.messages.conversations(session.userId, command.limit).then((items) =>
          session.send(
            conversationsWithGroupsFrame(
              items.map((item) =>
                item.group === undefined
                  ? item
                  : {
                      groupId: item.with,
                      name: item.group.name,
                      lastMessageJson: item.lastMessageJson,
                      unread: item.unread,
                    },
              ),
            ),
          ),
        );
      case "get_groups":
      case "get_read_by":
        if (!this.mayRead(session)) return undefined;
        return this.group(session, command);
      case "create_group":
      case "add_member":
      case "remove_member":
      case "leave_group":
      case "rename_group":
      case "group_message":
        return this.group(session, command);
      case "refresh": {
        const now = this.now();
        const wait = session.lastRefreshAt + REFRESH_INTERVAL_MS - now;
        if (wait > 0) {
          this.rateLimited(session, wait, "refresh");
          return undefined;
        }
        session.lastRefreshAt = now;
        // A promise like an engine call (with JWKS it may wait for the provider): the frames
        // after it wait in the backlog, so a message sent after a refresh is handled after it.
        return this.refresh(session, command.token);
      }
      default:
        return assertNever(command);
    }
  }

  private settle(session: Session): void {
    this.handleBacklog(session);
    // Counted down only after the backlog was dispatched, so "idle" means no frame is pending.
    if (--this.inFlight === 0 && this.idle !== undefined) {
      this.idle();
      this.idle = undefined;
    }
  }

  /** Handles waiting frames until one needs the engine (or none is left). */
  private handleBacklog(session: Session): void {
    session.busy = false;
    const backlog = session.backlog;
    if (backlog === undefined) return;
    const wasPaused = backlog.length >= BACKLOG_PAUSE_AT;
    while (!session.busy && backlog.length > 0 && !session.isClosed) {
      this.dispatch(session, backlog.shift() as string);
    }
    if (wasPaused && backlog.length < BACKLOG_PAUSE_AT) session.transport.resume();
  }

  /**
   * Stores and acks a message. Returns a promise only when the engine needs a round trip: an
   * engine that stores in process (appendIfAllowedNow) is answered in the same turn, with no
   * promise, continuation or backlog bookkeeping per message (below saturation, where each
   * message is its own I/O event, those were a large share of its cost).
   */
  private directMessage(
    session: Session,
    command: DirectMessageCommand,
  ): Promise<void> | undefined {
    if (command.to === session.userId) {
      this.refuse(session, {
        code: ErrorCode.SELF_MESSAGE,
        message: "You cannot send a message to yourself.",
      });
      return undefined;
    }
    const now = this.now();
    if (session.rateLimitedUntil > now) {
      this.rateLimited(session, session.rateLimitedUntil - now, "messages");
      return undefined;
    }
    const started = performance.now();
    const input: AppendInput = {
      id: randomUUID(),
      from: session.userId,
      to: command.to,
      content: command.content,
      timestamp: isoTimestamp(this.now()),
      senderConnId: session.connId,
      ...(command.clientMsgId === undefined ? {} : { clientMsgId: command.clientMsgId }),
    };
    const messages = this.engine.messages;
    if (messages.appendIfAllowedNow === undefined) {
      // The rate limit is counted in the same step as the store: one round trip on Redis.
      return messages
        .appendIfAllowed(input)
        .then((result) => this.answerSend(session, command, input, result, started));
    }
    // As the promise path does: a failure is the request's, answered by failRequest.
    try {
      this.answerSend(session, command, input, messages.appendIfAllowedNow(input), started);
    } catch (error) {
      this.failRequest(session, error, command);
    }
    return undefined;
  }

  /** Acks a stored message, or answers the limit that refused it. */
  private answerSend(
    session: Session,
    command: DirectMessageCommand,
    input: AppendInput,
    result: AppendResult | RateRefusal,
    started: number,
  ): void {
    if ("refused" in result) {
      if (result.limit !== "rate") {
        // A quota refuses this message, not every one: messages to known peers, or smaller
        // ones, may still fit, so the engine is asked again next time.
        this.rateLimited(session, result.retryAfterMs, result.limit);
        return;
      }
      // The sliding window cannot have room before retryAfterMs, on any node: answer locally
      // until then instead of asking the engine again.
      session.rateLimitedUntil = this.now() + result.retryAfterMs;
      this.rateLimited(session, result.retryAfterMs, "messages");
      return;
    }
    // A retried clientMsgId gets the original's ack (its id, timestamp and seq), nothing new.
    session.send(
      messageAckFrame({
        messageId: result.messageId,
        to: command.to,
        timestamp: result.timestamp,
        status: result.status,
        seq: result.seq,
        position: result.senderPosition,
        clientMsgId: command.clientMsgId,
      }),
    );
    this.metrics.acked(result.status, (performance.now() - started) / 1000);
    if (this.events !== undefined) this.reportStored(input, result);
  }

  /** Tells the events sink of a newly stored message (after its ack: the ack never waits). */
  private reportStored(
    input: { id: string; from: string; to: string; content: string; clientMsgId?: string },
    result: AppendResult,
  ): void {
    if (result.duplicate || this.events === undefined) return;
    this.events.messageStored({
      id: result.messageId,
      from: input.from,
      to: input.to,
      content: input.content,
      timestamp: result.timestamp,
      seq: result.seq,
      status: result.status,
      clientMsgId: input.clientMsgId,
    });
  }

  /**
   * Sends a message as `input.from` for the server API, through the same checks and the same
   * engine call as a WebSocket send: the frame's validation (so the same error codes), one
   * atomic append (stored before this resolves, idempotent on clientMsgId, delivered live or
   * queued, copied to every connection of the sender). Rejects as a WebSocket send fails (the
   * engine's EngineUnavailableError says whether it may have been stored).
   */
  async sendAs(send: SendAsInput): Promise<SendAsResult> {
    const fromProblem = userIdProblem(send.from);
    if (fromProblem !== undefined) {
      return refused(ErrorCode.INVALID_FORMAT, `"from" is not a valid user id: it ${fromProblem}.`);
    }
    // The WebSocket frame's own parser: every rule, message and code of a direct_message.
    const parsed = parseClientFrame(
      JSON.stringify({
        type: "direct_message",
        to: send.to,
        content: send.content,
        clientMsgId: send.clientMsgId,
      }),
    );
    if (!parsed.ok) return { ok: false, error: parsed.error };
    const command = parsed.command as DirectMessageCommand;
    if (command.to === send.from) {
      return refused(ErrorCode.SELF_MESSAGE, "You cannot send a message to yourself.");
    }
    const started = performance.now();
    const input = {
      id: randomUUID(),
      from: send.from,
      to: command.to,
      content: command.content,
      timestamp: isoTimestamp(this.now()),
      senderConnId: API_CONNECTION_ID,
      ...(command.clientMsgId === undefined ? {} : { clientMsgId: command.clientMsgId }),
    };
    // The engine copies a message to the sender's other connections when the sender has more
    // than one (the sending one gets an ack): an API send has no sending connection, so a
    // sender with exactly one gets its copy from here. The count is read in the same tick as
    // the append, so both leave in one write and cost no extra round trip; a device that
    // connects or leaves in between may get the copy twice (same id) or only through its inbox.
    const [senderCount, result] = await Promise.all([
      this.engine.presence.connectionCounts([send.from]).then(
        (counts) => counts[0] ?? 0,
        () => 0,
      ),
      send.applyLimits === true
        ? this.engine.messages.appendIfAllowed(input)
        : this.engine.messages.append(input),
    ]);
    if ("refused" in result) {
      const limit: LimitName = result.limit === "rate" ? "messages" : result.limit;
      const retry = Math.max(1, Math.ceil(result.retryAfterMs));
      return {
        ok: false,
        error: {
          code: ErrorCode.RATE_LIMITED,
          message: `${this.limitTexts[limit]}; retry in ${retry} ms. The message was not sent.`,
        },
        details: { limit, retryAfterMs: retry },
      };
    }
    this.metrics.acked(result.status, (performance.now() - started) / 1000);
    this.reportStored(input, result);
    if (senderCount === 1 && !result.duplicate) {
      const messageJson = encodeMessage({
        id: result.messageId,
        from: input.from,
        to: input.to,
        content: input.content,
        timestamp: result.timestamp,
        seq: result.seq,
        ...(input.clientMsgId === undefined ? {} : { clientMsgId: input.clientMsgId }),
      });
      this.engine.broker
        .publishFrame(input.from, directMessageFrame(messageJson, result.senderPosition, false))
        .catch((error: unknown) =>
          this.log.warn({ err: error }, "could not copy an API send to the sender's connection"),
        );
    }
    return {
      ok: true,
      ack: {
        messageId: result.messageId,
        to: command.to,
        timestamp: result.timestamp,
        status: result.status,
        seq: result.seq,
        position: result.senderPosition,
        ...(command.clientMsgId === undefined ? {} : { clientMsgId: command.clientMsgId }),
        duplicate: result.duplicate,
      },
    };
  }

  // ---- Groups ----------------------------------------------------------------------------

  /**
   * A group command. The engine decides membership and admin rights in the same step as it
   * stores (GroupStore); its refusals (GroupRefusedError) become FORBIDDEN or NOT_FOUND in
   * failRequest.
   */
  private async group(session: Session, command: GroupCommand): Promise<void> {
    const { groups } = this.engine;
    const user = session.userId;
    const event = () => ({ eventId: randomUUID(), timestamp: new Date(this.now()).toISOString() });
    switch (command.type) {
      case "group_message":
        return this.groupMessage(session, command);
      case "create_group": {
        const change = await groups.create({
          groupId: randomUUID(),
          name: command.name,
          createdBy: user,
          members: command.members,
          ...event(),
        });
        const frame = groupFrame(change.group);
        session.send(frame);
        // Every member learns of the group at once; the `created` entry in their inbox
        // carries the same news for a device that was away.
        await Promise.all(
          change.group.members
            .filter((member) => member !== user)
            .map((member) => this.engine.broker.publishFrame(member, frame)),
        );
        return;
      }
      case "add_member":
      case "remove_member":
      case "leave_group":
      case "rename_group": {
        const kind =
          command.type === "add_member"
            ? "add"
            : command.type === "remove_member"
              ? "remove"
              : command.type === "leave_group"
                ? "leave"
                : "rename";
        const change = await groups.change({
          groupId: command.groupId,
          actor: user,
          kind,
          ...("userId" in command ? { userId: command.userId } : {}),
          ...("name" in command ? { name: command.name } : {}),
          ...event(),
        });
        const frame = groupFrame(change.group);
        session.send(frame);
        if (command.type === "add_member" && change.seq > 0)
          await this.engine.broker.publishFrame(command.userId, frame);
        return;
      }
      case "get_groups":
        session.send(groupsFrame(await groups.groupsOf(user, Number.MAX_SAFE_INTEGER)));
        return;
      case "get_history": {
        const page = await groups.history(user, command.groupId, command.limit, command.before);
        session.send(groupHistoryFrame(command.groupId, page.messages, page.hasMore));
        return;
      }
      case "mark_read":
        return groups.markRead(user, command.groupId, command.upTo);
      case "get_read_by": {
        const { count, members } = await groups.readBy(user, command.groupId, command.seq);
        session.send(readByFrame(command.groupId, command.seq, count, members));
        return;
      }
      case "typing":
        if (!this.mayType(session)) return;
        return groups.publishToMembers(
          user,
          command.groupId,
          groupTypingFrame(command.groupId, user, command.state),
        );
    }
  }

  /** A group message: stored in the group's log and every member's inbox before its ack. */
  private async groupMessage(session: Session, command: GroupMessageCommand): Promise<void> {
    const now = this.now();
    if (session.rateLimitedUntil > now) {
      this.rateLimited(session, session.rateLimitedUntil - now, "messages");
      return;
    }
    const started = performance.now();
    const result = await this.engine.groups.append({
      id: randomUUID(),
      groupId: command.groupId,
      from: session.userId,
      content: command.content,
      timestamp: new Date(now).toISOString(),
      senderConnId: session.connId,
      ...(command.clientMsgId === undefined ? {} : { clientMsgId: command.clientMsgId }),
    });
    if ("refused" in result) {
      // The same sliding window as direct messages (see directMessage).
      session.rateLimitedUntil = this.now() + result.retryAfterMs;
      this.rateLimited(session, result.retryAfterMs, "messages");
      return;
    }
    session.send(
      groupMessageAckFrame({
        messageId: result.messageId,
        groupId: command.groupId,
        timestamp: result.timestamp,
        status: result.status,
        seq: result.seq,
        position: result.senderPosition,
        clientMsgId: command.clientMsgId,
      }),
    );
    this.metrics.acked(result.status, (performance.now() - started) / 1000);
  }

  private async history(session: Session, command: GetHistoryCommand): Promise<void> {
    const page = await this.engine.messages.history(
      session.userId,
      command.with,
      command.limit,
      command.before,
    );
    session.send(messageHistoryFrame(command.with, page.messages, page.hasMore));
  }

  /** Relays a typing indicator: never stored or queued, and at most a few per second per user. */
  private async typing(session: Session, command: TypingCommand): Promise<void> {
    if (command.to === session.userId) {
      this.refuse(session, {
        code: ErrorCode.SELF_MESSAGE,
        message: "You cannot send typing indicators to yourself.",
      });
      return;
    }
    if (!this.mayType(session)) return;
    await this.engine.broker.publishFrame(command.to, typingFrame(session.userId, command.state));
  }

  /** Counts one typing frame against the user's budget on this node; false: drop it. */
  private mayType(session: Session): boolean {
    const limits = session.limits;
    const second = Math.floor(this.now() / 1000);
    if (second !== limits.typingSecond) {
      limits.typingSecond = second;
      limits.typingBudget = TYPING_PER_SECOND;
    }
    if (limits.typingBudget <= 0) return false;
    limits.typingBudget--;
    return true;
  }

  /**
   * Replaces the session's token with `token` when it is valid and for the same user: the
   * connection then lives until the new `exp` (`refreshed`). Otherwise an error, and the old
   * deadline stands: UNAUTHORIZED for a token that is not valid, FORBIDDEN for another user's
   * (a connection never changes user: its subscriptions, presence and limits are the user's).
   */
  private async refresh(session: Session, token: string): Promise<void> {
    if (this.tokens === undefined) throw new Error("no token verifier configured");
    const keeps = () =>
      `This connection keeps its current token, which expires at ${new Date(session.expiresAt).toISOString()}.`;
    let principal: Awaited<ReturnType<TokenCheck["verify"]>>;
    try {
      principal = await this.tokens.verify(token);
    } catch (error) {
      if (!isTokenRefused(error)) throw error;
      if (session.logs("debug")) session.log.debug({ reason: error.reason }, "refresh refused");
      this.sendError(
        session,
        ErrorCode.UNAUTHORIZED,
        `The refresh token was refused: ${error.reason}. ${keeps()}`,
      );
      return;
    }
    if (principal.userId !== session.userId) {
      session.log.warn({ tokenFor: principal.userId }, "refresh with another user's token refused");
      this.sendError(
        session,
        ErrorCode.FORBIDDEN,
        `The refresh token is for another user; a connection cannot change user. ${keeps()}`,
      );
      return;
    }
    // A token the server API revoked is refused here as at the upgrade.
    const revokedBefore = this.engine.revocations.revokedBefore(session.userId);
    if (
      revokedBefore !== undefined &&
      (principal.issuedAt === undefined || principal.issuedAt < revokedBefore)
    ) {
      this.sendError(
        session,
        ErrorCode.UNAUTHORIZED,
        `The refresh token was refused: token revoked. ${keeps()}`,
      );
      return;
    }
    session.setToken(principal.expiresAt, this.now(), this.noticeMs, principal.issuedAt);
    if (!session.isClosed) this.tokenDeadlines.schedule(session);
    session.send(refreshedFrame(Math.floor(principal.expiresAt / 1000)));
  }

  // ---- Errors -------------------------------------------------------------------------------

  /** Sends an error frame (and counts it). */
  private sendError(
    session: Session,
    code: ErrorCode,
    message: string,
    details?: ErrorDetails,
  ): void {
    this.metrics.error(code);
    session.send(errorFrame(code, message, details));
  }

  /**
   * Counts one read of the session's user against its token bucket (READ_RATE_LIMIT per second,
   * as a burst too), or answers RATE_LIMITED and returns false. Per node: no engine call, so
   * the limit costs a read nothing; a user connected to k nodes may read k times as much.
   */
  private mayRead(session: Session): boolean {
    const limits = session.limits;
    const now = this.now();
    const rate = this.readRateLimit;
    limits.readTokens = Math.min(
      rate,
      limits.readTokens + (Math.max(0, now - limits.readRefilledAt) * rate) / 1000,
    );
    limits.readRefilledAt = now;
    if (limits.readTokens >= 1) {
      limits.readTokens--;
      return true;
    }
    this.rateLimited(session, ((1 - limits.readTokens) * 1000) / rate, "reads");
    return false;
  }

  /** RATE_LIMITED for `limit`, with when to retry, in the text and as fields (additions). */
  private rateLimited(session: Session, retryAfterMs: number, limit: LimitName): void {
    const retry = Math.max(1, Math.ceil(retryAfterMs));
    const what =
      limit === "reads"
        ? "Nothing was read."
        : limit === "refresh"
          ? "The token was not checked; the connection keeps its current one."
          : "The message was not sent.";
    this.metrics.error(ErrorCode.RATE_LIMITED);
    session.send(
      errorFrame(
        ErrorCode.RATE_LIMITED,
        `${this.limitTexts[limit]}; retry in ${retry} ms. ${what}`,
        { limit, retryAfterMs: retry },
      ),
    );
  }

  /** Answers a bad frame; a connection that keeps sending them is closed with 1008. */
  private refuse(session: Session, error: ProtocolError): void {
    this.sendError(session, error.code, error.message);
    const now = this.now();
    if (now - session.invalidWindowStart > INVALID_FRAME_WINDOW_MS) {
      session.invalidWindowStart = now;
      session.invalidFrames = 0;
    }
    if (++session.invalidFrames > INVALID_FRAME_LIMIT) {
      session.log.warn(
        { invalidFrames: session.invalidFrames },
        "closing a connection that keeps sending invalid frames",
      );
      session.close(CloseCode.POLICY_VIOLATION, "too many invalid frames");
    }
  }

  /**
   * A request failed in the engine or in our code: say so, never ack. For a send, say what is
   * known of its fate: when the engine may have stored it (the store's reply was lost), "nothing
   * was sent" would be a lie that a client acts on, so the error says `outcome: "unknown"` and
   * asks for a resend with the same clientMsgId.
   */
  private failRequest(session: Session, error: unknown, command: ClientCommand): void {
    if (error instanceof GroupRefusedError) {
      // Named, so that a client can tell which request was refused: mark_read and typing have
      // no answer of their own that the error could stand in for.
      const clientMsgId = "clientMsgId" in command ? command.clientMsgId : undefined;
      const groupId = "groupId" in command ? command.groupId : undefined;
      this.sendError(
        session,
        error.reason === "not_found" ? ErrorCode.NOT_FOUND : ErrorCode.FORBIDDEN,
        error.message,
        {
          ...(clientMsgId === undefined ? {} : { clientMsgId }),
          ...(groupId === undefined ? {} : { groupId }),
        },
      );
      return;
    }
    const send =
      command.type === "direct_message" || command.type === "group_message" ? command : undefined;
    const details: ErrorDetails | undefined =
      send === undefined
        ? undefined
        : {
            outcome:
              error instanceof EngineUnavailableError && error.mayHaveSucceeded
                ? "unknown"
                : "not_stored",
            ...(send.clientMsgId === undefined ? {} : { clientMsgId: send.clientMsgId }),
          };
    if (error instanceof EngineUnavailableError) {
      session.log.warn({ err: error }, "engine unavailable");
      this.sendError(session, ErrorCode.UNAVAILABLE, unavailableText(details), details);
      return;
    }
    if (error instanceof EngineFeatureUnavailableError) {
      // The deployment does not offer it: say so, without logging an error per request.
      this.sendError(session, ErrorCode.INTERNAL_ERROR, error.message, details);
      return;
    }
    session.log.error({ err: error }, "request failed");
    this.sendError(
      session,
      ErrorCode.INTERNAL_ERROR,
      send === undefined
        ? "The request failed on the server; retry later."
        : "The request failed on the server; the message was not stored.",
      details,
    );
  }
}

const OPENED = Promise.resolve();

function refused(code: ErrorCode, message: string): SendAsResult {
  return { ok: false, error: { code, message } };
}

/** The text of an UNAVAILABLE error, by what is known of the failed request. */
function unavailableText(details: ErrorDetails | undefined): string {
  switch (details?.outcome) {
    case undefined:
      return "The service cannot serve this right now; retry later.";
    case "not_stored":
      return "The service cannot store messages right now; this one was not stored. Send it again later.";
    case "unknown":
      return details.clientMsgId === undefined
        ? "The service lost track of this message: it may or may not have been stored. Check the history before sending it again, and send with a clientMsgId to make retries safe."
        : "The service lost track of this message: it may or may not have been stored. Send it again with the same clientMsgId: it is never stored twice.";
  }
}

function assertNever(value: never): never {
  throw new Error(`unhandled command ${JSON.stringify(value)}`);
}

function nothingSent(): boolean {
  return false;
}
