import type { CloseCode } from "@mrezhen/protocol";
import type { Logger, Transport } from "./ports.js";

/**
 * Which presence frames a connection gets (`?presence=` in its URL):
 * - "all" (the default, `on`): a `presence` frame with the full online list for every change of
 *   any user: the original protocol, whose cost grows with the square of the users online;
 * - "contacts": `presence` deltas (no list) for the users it has a conversation with only;
 * - "off": none (it can still ask with `get_online_users`).
 */
export type PresenceMode = "all" | "contacts" | "off";

/** A live message frame that arrived while the session was replaying (queue flush or sync). */
interface HeldFrame {
  readonly messageId: string;
  /** This user's inbox position of the message. */
  readonly position: number;
  readonly frame: string;
}

/**
 * Budgets of one user on this node, shared by all of the user's sessions here (the Hub gives
 * each session its user's), so that opening more connections does not buy more.
 */
export interface UserLimits {
  /** Reads (get_history, get_conversations, get_online_users) left: a token bucket. */
  readTokens: number;
  /** When the bucket was last refilled (ms since the epoch; 0: never, so it starts full). */
  readRefilledAt: number;
  /** Typing frames the user may still relay in the current second, and when it started. */
  typingBudget: number;
  typingSecond: number;
}

/**
 * One authenticated connection. Holds the per-connection state the core needs; all behaviour
 * lives in ChatService and Hub.
 */
export class Session {
  /**
   * "opening" until the offline queue is flushed (or, for an opted-in connection, the inbox
   * replayed); "syncing" during a later `sync`. Live messages are held back in both, so that
   * replayed (older) messages always come first. "closed" once the transport closed.
   */
  state: "opening" | "open" | "syncing" | "closed" = "opening";
  /** Whether presence counted this connection (so that closing must uncount it). */
  registered = false;
  /** Resolves when open() has finished, successfully or not. */
  opened: Promise<void> = Promise.resolve();

  /**
   * Frames read but not yet handled, while an earlier frame is still being handled. Made when
   * first needed: most connections never have a frame waiting.
   */
  backlog: string[] | undefined;
  /**
   * A frame is being handled asynchronously, or the session is still opening: later frames wait
   * in `backlog` (per-connection order). So a client's first answer, even a pong, means its
   * connection is registered, subscribed and its offline queue flushed.
   */
  busy = true;

  /** Invalid frames counted in the current window, and when that window started. */
  invalidFrames = 0;
  invalidWindowStart = 0;
  /** Until when this connection's sends are known to be over the rate limit (no engine call needed). */
  rateLimitedUntil = 0;
  /** The user's budgets on this node: set by Hub.add to the object all its sessions share. */
  limits: UserLimits = { readTokens: 0, readRefilledAt: 0, typingBudget: 0, typingSecond: 0 };

  /**
   * When to send `token_expiring` (ms since the epoch), 0 once sent; set with the token (see
   * setToken). A number per connection, read by the periodic sweep when due (TokenDeadlines):
   * no timer per connection.
   */
  expiringNoticeAt = 0;
  /** Where the token sweep has this connection scheduled (TokenDeadlines' bookkeeping). */
  tokenBucket = -1;
  /** When the last `refresh` frame was read (ms since the epoch): one a second is allowed. */
  lastRefreshAt = Number.NEGATIVE_INFINITY;

  private held: HeldFrame[] | undefined;

  constructor(
    readonly connId: string,
    readonly userId: string,
    readonly displayName: string | undefined,
    /** Token expiry, ms since the epoch; a `refresh` moves it (see setToken). */
    public expiresAt: number,
    /**
     * Set when the connection opted in to acknowledged delivery (`?since=N`): it gets its inbox
     * after N instead of the offline queue, and live frames carry positions it acks.
     */
    readonly since: number | undefined,
    /** Which presence frames the connection asked for (`?presence=`; see PresenceMode). */
    readonly presence: PresenceMode,
    readonly transport: Transport,
    /** The node's logger; this session's child of it is made on first use (see `log`). */
    private readonly nodeLog: Logger,
    /**
     * The token's `iat` (ms since the epoch), if it had one: a revocation closes older ones. A
     * `refresh` moves it (see setToken).
     */
    public issuedAt?: number,
  ) {}

  /**
   * A logger carrying `connId` and `userId`, made for each use and not kept: connections log
   * rarely, and a child logger held by every idle connection would cost memory.
   */
  get log(): Logger {
    return this.nodeLog.child({ connId: this.connId, userId: this.userId });
  }

  /** Whether routine per-connection lines at `level` would be written at all. */
  logs(level: "debug" | "info"): boolean {
    return this.nodeLog.isLevelEnabled(level);
  }

  /**
   * Takes a (new) token's expiry. `token_expiring` is due `noticeMs` before it, or halfway
   * through what is left when that is shorter: a client given short-lived tokens is not told
   * to refresh the moment it connects (or refreshes), which would make it refresh in a loop.
   */
  setToken(expiresAt: number, now: number, noticeMs: number, issuedAt?: number): void {
    this.expiresAt = expiresAt;
    this.issuedAt = issuedAt;
    this.expiringNoticeAt = expiresAt - Math.min(noticeMs, Math.max(0, expiresAt - now) / 2);
  }

  /** Whether the transport closed (read through a getter: it changes across awaits). */
  get isClosed(): boolean {
    return this.state === "closed";
  }

  send(frame: string): void {
    if (this.state !== "closed") this.transport.send(frame);
  }

  /** Delivers a live message frame, or holds it while a replay is running. */
  deliver(messageId: string, position: number, frame: string): void {
    if (this.state === "opening" || this.state === "syncing") {
      this.held ??= [];
      this.held.push({ messageId, position, frame });
      return;
    }
    this.send(frame);
  }

  /** Starts a replay on an open session: live messages are held until {@link endReplay}. */
  beginSync(): void {
    if (this.state === "open") this.state = "syncing";
  }

  /**
   * Ends a replay: sends the held live frames in arrival order, skipping those the replay already
   * sent (`alreadySent` decides, by id or by position), so there is no duplicate and no gap at
   * the seam between replay and live traffic.
   */
  endReplay(alreadySent: (messageId: string, position: number) => boolean): void {
    if (this.state !== "opening" && this.state !== "syncing") return;
    this.state = "open";
    const held = this.held;
    this.held = undefined;
    if (held === undefined) return;
    for (const entry of held)
      if (!alreadySent(entry.messageId, entry.position)) this.send(entry.frame);
  }

  close(code: CloseCode, reason: string): void {
    this.transport.close(code, reason);
  }
}
