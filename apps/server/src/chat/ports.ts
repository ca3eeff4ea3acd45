/**
 * What the chat core needs from its surroundings, as small interfaces, so that it can be tested
 * without sockets (see test/chat-core.test.ts) and never depends on ws, Fastify or a store driver.
 */

/** One client connection, as the core sees it. The http layer adapts a ws socket to this. */
export interface Transport {
  /** Queues a text frame. Never throws; frames sent after close are dropped. */
  send(frame: string): void;
  /** Starts a clean close with a WebSocket close code. Idempotent. */
  close(code: number, reason: string): void;
  /** Drops the connection at once, without a close handshake. */
  terminate(): void;
  /** Bytes queued for this connection and not yet written to the network. */
  readonly bufferedAmount: number;
  /**
   * Resolves true once the client has received every frame sent before this call, false if the
   * connection closes first. (A WebSocket ping whose pong comes back: any conforming client
   * answers pings, in order, after the frames before them.) The flush and the replay pace
   * themselves on it, and a queued message leaves the queue only once it is confirmed.
   */
  whenReceived(): Promise<boolean>;
  /** Stops reading frames from the client (TCP backpressure), until resume(). */
  pause(): void;
  resume(): void;
}

/** The logger the core writes to (pino's Logger fits). */
export interface Logger {
  debug(object: object, message?: string): void;
  info(object: object, message?: string): void;
  warn(object: object, message?: string): void;
  error(object: object, message?: string): void;
  child(bindings: Record<string, unknown>): Logger;
  isLevelEnabled(level: string): boolean;
}

/**
 * What the core counts, for /metrics. Called on the per-message path: implementations must be
 * cheap (pre-bound counters, no allocation). The default does nothing.
 */
export interface ChatMetrics {
  /** A frame was read; `type` is its command type, or "invalid". */
  frameIn(type: string): void;
  /** An error frame was sent. */
  error(code: string): void;
  /** A direct message was stored and acked, `seconds` after its frame was read. */
  acked(status: "delivered" | "queued", seconds: number): void;
  /** A message was written live to one of its recipient's (or sender's other) connections. */
  deliveredLive(): void;
  /** A connection coming online was sent `messages` from its offline queue (once per connection). */
  queueFlushed(messages: number): void;
}

/** A message the core stored (not a retried duplicate), for the service's events. */
export interface StoredMessage {
  readonly id: string;
  readonly from: string;
  readonly to: string;
  readonly content: string;
  readonly timestamp: string;
  readonly seq: number;
  readonly status: "delivered" | "queued";
  readonly clientMsgId: string | undefined;
}

/**
 * Where the core reports what the service's backend may want to hear of (webhooks). Optional:
 * without it the core does nothing extra per message. Called synchronously on the hot path;
 * implementations queue the work and never throw.
 */
export interface ChatEvents {
  /** A message was stored (by a WebSocket or an API send), right after its ack. */
  messageStored(message: StoredMessage): void;
  /**
   * A user came online or went offline, cluster-wide, as this node heard it (every node hears
   * every change); `version` is the engine's number of the change, when it has one.
   */
  presenceChanged(userId: string, status: "online" | "offline", version: number | undefined): void;
}

export const noMetrics: ChatMetrics = {
  frameIn: () => {},
  error: () => {},
  acked: () => {},
  deliveredLive: () => {},
  queueFlushed: () => {},
};

/**
 * Verifies the token of a `refresh` frame (the edge's TokenVerifier). Resolves to whom it is for
 * and when it expires; rejects with a {@link TokenRefused} when the token is not valid.
 */
export interface TokenCheck {
  verify(token: string): Promise<{
    readonly userId: string;
    readonly expiresAt: number;
    /** `iat` in ms, when the token has one (the server API's revocations compare it). */
    readonly issuedAt?: number | undefined;
  }>;
}

/** A token refused by a TokenCheck: `reason` is safe to show the client. */
export interface TokenRefused extends Error {
  readonly reason: string;
}

export function isTokenRefused(error: unknown): error is TokenRefused {
  return error instanceof Error && typeof (error as Partial<TokenRefused>).reason === "string";
}
