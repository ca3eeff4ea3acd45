import type { CloseCode } from "@mrezhen/protocol";
import type { Logger, Transport } from "./ports.js";

/** A live frame that arrived while the session was still flushing its offline queue. */
interface HeldFrame {
  readonly messageId: string;
  readonly frame: string;
}

/**
 * One authenticated connection. Holds the per-connection state the core needs; all behaviour
 * lives in ChatService and Hub.
 */
export class Session {
  /**
   * "opening" until the offline queue has been flushed: live messages are held back meanwhile so
   * that queued (older) messages always come first. "closed" once the transport closed.
   */
  state: "opening" | "open" | "closed" = "opening";
  /** Whether presence counted this connection (so that closing must uncount it). */
  registered = false;
  /** Resolves when open() has finished, successfully or not. */
  opened: Promise<void> = Promise.resolve();

  /** Frames read but not yet handled, while an earlier frame is still being handled. */
  readonly backlog: string[] = [];
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

  private held: HeldFrame[] | undefined;

  constructor(
    readonly connId: string,
    readonly userId: string,
    readonly displayName: string | undefined,
    /** Token expiry, ms since the epoch. */
    readonly expiresAt: number,
    readonly transport: Transport,
    readonly log: Logger,
  ) {}

  /** Whether the transport closed (read through a getter: it changes across awaits). */
  get isClosed(): boolean {
    return this.state === "closed";
  }

  send(frame: string): void {
    if (this.state !== "closed") this.transport.send(frame);
  }

  /** Delivers a live message frame, or holds it while the queue flush is running. */
  deliver(messageId: string, frame: string): void {
    if (this.state === "opening") {
      this.held ??= [];
      this.held.push({ messageId, frame });
      return;
    }
    this.send(frame);
  }

  /** Ends the opening phase: sends the held live frames, skipping any the queue flush already sent. */
  finishOpening(sentIds: ReadonlySet<string>): void {
    if (this.state !== "opening") return;
    this.state = "open";
    const held = this.held;
    this.held = undefined;
    if (held === undefined) return;
    for (const entry of held) if (!sentIds.has(entry.messageId)) this.send(entry.frame);
  }

  close(code: CloseCode, reason: string): void {
    this.transport.close(code, reason);
  }
}
