import { shouldReconnect } from "@mrezhen/protocol";
import { backoffDelay } from "./backoff.js";
import type { ClientStorage } from "./storage.js";
import type {
  Ack,
  ChatMessage,
  Conversation,
  GroupAck,
  GroupHistoryPage,
  GroupInfo,
  GroupMessage,
  HistoryPage,
  Presence,
  ReadBy,
  Receipt,
  Synced,
  Typing,
  WireError,
  WireFrame,
} from "./wire.js";

/*
 * `shouldReconnect` is the one runtime value taken from @mrezhen/protocol: a five-line function
 * that the bundle inlines, so the published SDK still has no runtime dependency.
 */

/** The connection's life: `open` is a live socket; `closed` only after close() or a terminal code. */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/** The part of the WebSocket API the client uses: the browser's, or `ws`'s in Node. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ClientOptions {
  /** The node or load balancer, `wss://host/ws`; a function is asked again before every connect. */
  readonly url: string | (() => string);
  /** A fresh token: called before every connect, and when the server says it is about to expire. */
  readonly getToken: () => string | Promise<string>;
  /** The WebSocket class: the global one by default; in Node 20 pass `ws`'s. */
  readonly WebSocket?: WebSocketConstructor;
  /** Keeps the outbox and the inbox cursor; without it they live as long as the client. */
  readonly storage?: ClientStorage;
  /** Prefix of the storage keys: one per user if a device signs in as several. */
  readonly storageKey?: string;
  /** Presence frames wanted (`presence=` in the URL); `contacts` is the server's recommendation. */
  readonly presence?: "on" | "contacts" | "off";
  /** Idle time (ms) before the client pings to check the link (default 25 000). */
  readonly pingIntervalMs?: number;
  /** How long (ms) a ping may go unanswered before the link is declared dead (default 10 000). */
  readonly pongTimeoutMs?: number;
  /** Processed messages acked at once after this many (default 50)… */
  readonly ackEvery?: number;
  /** …or after this many ms (default 500). */
  readonly ackDelayMs?: number;
}

/** A conversation: a user's id, or a group. */
export type Peer = string | { readonly groupId: string };

/** A message waiting in the outbox for its ack: to a user (`to`) or a group (`groupId`). */
export type OutboxEntry = {
  readonly clientMsgId: string;
  readonly content: string;
  /** When the app sent it (ms since the epoch). */
  readonly createdAt: number;
} & (
  | { readonly to: string; readonly groupId?: undefined }
  | { readonly groupId: string; readonly to?: undefined }
);

/**
 * Why something failed. `code` is the server's error code, or one of the client's own:
 * `CLOSED` (a close code that must not be retried; see `closeCode`), `OFFLINE` (a request needs
 * an open connection), `DISCONNECTED` (the connection dropped before the answer), `TOKEN`
 * (getToken failed).
 */
export class ClientError extends Error {
  readonly code: string;
  readonly closeCode: number | undefined;
  readonly details: Partial<WireError>;
  constructor(code: string, message: string, details: Partial<WireError> = {}, closeCode?: number) {
    super(message);
    this.name = "ClientError";
    this.code = code;
    this.details = details;
    this.closeCode = closeCode;
  }
}

/** The events and what each listener gets. */
export interface ClientEvents {
  /** A message for this user (or sent by this user from another device), once, in order. */
  message: ChatMessage;
  /**
   * An entry of one of this user's groups, once, in order with `message`s (one inbox): a message
   * (`content`) or a membership change (`event`: created, joined, removed, left, renamed).
   */
  groupMessage: GroupMessage;
  /** A group's current state: an answer to a group command, or news of a group you were added to. */
  group: GroupInfo;
  /** A message from the outbox is stored. */
  ack: Ack | GroupAck;
  presence: Presence;
  receipt: Receipt;
  typing: Typing;
  state: ConnectionState;
  error: ClientError;
  /** The outbox changed (a send, an ack, a refusal): what is still waiting, oldest first. */
  outbox: readonly OutboxEntry[];
  /** A replay ended: everything up to `position` has been emitted. */
  synced: Synced;
  /** A connection closed (1006 when it dropped or never opened); the client decides what next. */
  close: { code: number; reason: string };
}

type Listener<T> = (value: T) => void;

/** An answer the client waits for: answers come back in request order on one connection. */
interface Pending {
  /** The answer's frame type. */
  readonly t: string;
  /**
   * Which group the request is about: for a `group` answer ("" for a group this user creates),
   * because `group` frames also arrive unasked (someone added you) and must not answer another
   * request; for a group read, so that a refusal naming the group finds it.
   */
  readonly g?: string | undefined;
  /** The outbox entry, for a send. */
  readonly id?: string;
  readonly ok?: (frame: WireFrame) => void;
  readonly ko?: (error: ClientError) => void;
}

type Entry = OutboxEntry & {
  /** Written on the current connection and not yet answered. */
  sent: boolean;
};

/** Errors after which resending the same message can only fail the same way. */
const RETRYABLE = ["UNAVAILABLE", "INTERNAL_ERROR", "RATE_LIMITED"];
/** A group's refusals (no such group, not a member or not its admin). */
const GROUP_REFUSALS = ["FORBIDDEN", "NOT_FOUND"];
/** Answers to reads: errors without a clientMsgId about reads are matched to these. */
const READS = ["message_history", "conversations", "online_users"];
/** Recent message ids kept to drop a replay's overlap: enough for any overlap, bounded. */
const SEEN_MAX = 2000;
const OPEN = 1;

/**
 * A Mrezhen connection that does not lose messages: sends wait in an outbox (persisted with
 * `storage`) until acked and are resent with the same `clientMsgId` after any failure, so the
 * server stores each once; received messages resume from a persisted cursor (`since`), are
 * deduplicated by id, and acked as the app processes them; the link reconnects by itself with
 * backoff, notices dead links with app-level pings, and renews the token.
 *
 * @example
 * const client = new MrezhenClient({ url: "wss://chat.example/ws", getToken: fetchToken });
 * client.on("message", (m) => show(m.from, m.content));
 * await client.connect();
 * await client.sendMessage({ to: "bob", content: "hi" }); // resolves once stored
 */
export class MrezhenClient {
  /** The current state; `state` events report its changes. */
  state: ConnectionState = "closed";
  /** The last inbox position the app processed (what the next connect asks to resume from). */
  cursor = 0;
  /** This user's id, read from the token's `sub` at each connect (not verified: display only). */
  userId: string | undefined;
  private readonly o: ClientOptions;
  private readonly key: string;
  private readonly Socket: WebSocketConstructor;
  /** False until storage is read: saving the outbox before that would overwrite the saved one. */
  private ready = false;
  private readonly listeners = new Map<string, Set<Listener<never>>>();
  private readonly outboxMap = new Map<string, Entry>();
  private readonly waiters = new Map<
    string,
    [(ack: never) => void, (error: ClientError) => void]
  >();
  private readonly seen = new Set<string>();
  /** Latest mark_read frame per peer made while offline, sent on the next open. */
  private readonly reads = new Map<string, object>();
  private inflight: Pending[] = [];
  private ws: WebSocketLike | undefined;
  private wanted = false;
  private loaded: Promise<void> | undefined;
  private attempt = 0;
  private sendFailures = 0;
  private ackedUpTo = 0;
  private unacked = 0;
  private lastRx = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private pingTimer: ReturnType<typeof setTimeout> | undefined;
  private ackTimer: ReturnType<typeof setTimeout> | undefined;
  /** Set while sends wait for a retry time: new sends queue behind, so order is kept. */
  private holdTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(options: ClientOptions) {
    this.o = options;
    this.key = options.storageKey ?? "mrezhen";
    const Socket =
      options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (Socket === undefined)
      throw new Error("No global WebSocket: pass the WebSocket option (ws).");
    this.Socket = Socket;
  }

  /**
   * Subscribes to an event; returns the unsubscribe function.
   *
   * @example
   * const off = client.on("state", (state) => console.log(state));
   */
  on<K extends keyof ClientEvents>(type: K, listener: Listener<ClientEvents[K]>): () => void {
    const set = this.listeners.get(type) ?? new Set();
    this.listeners.set(type, set);
    set.add(listener as Listener<never>);
    return () => set.delete(listener as Listener<never>);
  }

  /**
   * Starts connecting and keeps connected until close(). Resolves once the outbox and cursor are
   * loaded from storage (so pending() is complete); sends work before, and while offline.
   */
  connect(): Promise<void> {
    this.wanted = true;
    if (this.ws === undefined && this.reconnectTimer === undefined) {
      void this.load().then(() => this.open());
    }
    return this.load();
  }

  /** Closes the connection and stops reconnecting. The outbox stays (and is resent on connect). */
  close(): void {
    this.wanted = false;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    this.sendAck();
    const ws = this.ws;
    if (ws !== undefined) {
      this.dropped();
      ws.close(1000, "bye");
    }
    this.setState("closed");
  }

  /**
   * Sends a direct message. It stays in the outbox until the server acks it, and is resent with
   * the same clientMsgId after reconnects and retryable errors, so it is stored exactly once.
   * Resolves with the ack; rejects when the server refuses it for good (CONTENT_TOO_LONG,
   * SELF_MESSAGE, EMPTY_CONTENT, INVALID_FORMAT…), and then it leaves the outbox.
   *
   * @example
   * const ack = await client.sendMessage({ to: "bob", content: "hello" });
   * console.log(ack.status); // "delivered" or "queued"
   */
  sendMessage(message: { to: string; content: string }): Promise<Ack>;
  /**
   * Sends a message to a group, through the same outbox, with the same promise: resolves with
   * the group ack (`groupId`, the group `seq`); rejects when refused for good (FORBIDDEN: not a
   * member; NOT_FOUND: no such group; EMPTY_CONTENT…).
   *
   * @example
   * const ack = await client.sendMessage({ groupId, content: "hello all" });
   */
  sendMessage(message: { groupId: string; content: string }): Promise<GroupAck>;
  sendMessage(
    message: { to: string; content: string } | { groupId: string; content: string },
  ): Promise<Ack | GroupAck> {
    // Only the fields the wire frame takes: an app's extra fields must not be sent or stored.
    const entry = {
      clientMsgId: newId(),
      ...("groupId" in message ? { groupId: message.groupId } : { to: message.to }),
      content: message.content,
      createdAt: Date.now(),
      sent: false,
    } as Entry;
    const promise = new Promise<Ack | GroupAck>((resolve, reject) => {
      this.waiters.set(entry.clientMsgId, [resolve, reject]);
    });
    // The refusal is also an `error` event: an app that only listens there has no unhandled rejection.
    promise.catch(() => {});
    this.outboxMap.set(entry.clientMsgId, entry);
    this.outboxChanged();
    this.flush();
    return promise;
  }

  /** The messages still waiting for their ack, oldest first. */
  pending(): OutboxEntry[] {
    return [...this.outboxMap.values()].map(({ sent: _, ...entry }) => entry);
  }

  /**
   * A page of the conversation with `user`, oldest first. Needs an open connection.
   *
   * @example
   * const page = await client.history("bob", { limit: 50 });
   * if (page.hasMore) await client.history("bob", { before: page.messages[0].seq });
   */
  history(user: string, options?: { limit?: number; before?: number }): Promise<HistoryPage>;
  /**
   * A page of a group's log (messages and membership events), oldest first, paged by group
   * `seq`. A former member reads up to its removal.
   *
   * @example
   * const page = await client.history({ groupId }, { limit: 50 });
   */
  history(
    group: { groupId: string },
    options?: { limit?: number; before?: number },
  ): Promise<GroupHistoryPage>;
  history(peer: Peer, options: { limit?: number; before?: number } = {}): Promise<unknown> {
    return this.request(
      { type: "get_history", ...target(peer, "with"), ...options },
      "message_history",
      typeof peer === "string" ? undefined : peer.groupId,
    );
  }

  /**
   * Your conversations, most recent first, with unread counts. Needs an open connection.
   *
   * @example
   * for (const c of await client.conversations()) console.log(c.with, c.unread);
   */
  async conversations(limit?: number): Promise<Conversation[]> {
    const frame = await this.request<{ items: Conversation[] }>(
      limit === undefined ? { type: "get_conversations" } : { type: "get_conversations", limit },
      "conversations",
    );
    return frame.items;
  }

  /**
   * Which of `users` are online (all online users without it). Needs an open connection.
   *
   * @example
   * const online = await client.onlineUsers(["bob", "carol"]);
   */
  async onlineUsers(users?: string[]): Promise<string[]> {
    const frame = await this.request<{ users: string[] }>(
      users === undefined ? { type: "get_online_users" } : { type: "get_online_users", users },
      "online_users",
    );
    return frame.users;
  }

  /**
   * Marks the conversation with `user`, or the group `{ groupId }`, read up to its `seq` `upTo`
   * (the other side, or a small group's members, get a read receipt; a group's unread count
   * drops). Offline, the latest mark per conversation is sent on the next connect.
   *
   * @example
   * client.markRead(message.from, message.seq);
   * client.markRead({ groupId: entry.groupId }, entry.seq);
   */
  markRead(peer: Peer, upTo: number): void {
    if (peer === this.userId) return;
    const frame = { type: "mark_read", ...target(peer, "with"), upTo };
    // Keyed so a user id can never collide with a group id: a group's key has a control
    // character, which user ids may not contain.
    if (!this.write(frame))
      this.reads.set(typeof peer === "string" ? peer : `\0${peer.groupId}`, frame);
  }

  /**
   * Tells `user`, or the members of `{ groupId }`, you started or stopped typing. Dropped while
   * offline: it is stale by then.
   *
   * @example
   * input.oninput = () => client.typing("bob", "start");
   */
  typing(peer: Peer, state: "start" | "stop"): void {
    // The server refuses these with an error that names no request: never send one.
    if (peer !== this.userId) this.write({ type: "typing", ...target(peer, "to"), state });
  }

  // ---- Groups --------------------------------------------------------------------------------
  // Group sends, history, markRead and typing are the methods above, given `{ groupId }`. These
  // commands need an open connection; each answers with the group's new state (also a `group`
  // event), or rejects with the server's error (FORBIDDEN, NOT_FOUND, INVALID_FORMAT…).

  /**
   * Creates a group with you as its creator and admin, and `members` (user ids) in it.
   *
   * @example
   * const { groupId } = await client.createGroup("Team", ["bob", "carol"]);
   */
  createGroup(name: string, members: string[]): Promise<GroupInfo> {
    return this.groupCommand({ type: "create_group", name, members }, "");
  }

  /** Adds `userId` to the group (its creator only). */
  addMember(groupId: string, userId: string): Promise<GroupInfo> {
    return this.groupCommand({ type: "add_member", groupId, userId }, groupId);
  }

  /** Removes `userId` from the group (its creator only). */
  removeMember(groupId: string, userId: string): Promise<GroupInfo> {
    return this.groupCommand({ type: "remove_member", groupId, userId }, groupId);
  }

  /** Leaves the group: you get the `left` entry, and nothing of the group after it. */
  leaveGroup(groupId: string): Promise<GroupInfo> {
    return this.groupCommand({ type: "leave_group", groupId }, groupId);
  }

  /** Renames the group (any member); every member gets a `renamed` entry. */
  renameGroup(groupId: string, name: string): Promise<GroupInfo> {
    return this.groupCommand({ type: "rename_group", groupId, name }, groupId);
  }

  /**
   * Your groups.
   *
   * @example
   * for (const group of await client.getGroups()) console.log(group.name, group.members);
   */
  async getGroups(): Promise<GroupInfo[]> {
    return (await this.request<{ groups: GroupInfo[] }>({ type: "get_groups" }, "groups")).groups;
  }

  /** How many members (the sender aside) read the group up to `seq`: large groups send no receipts. */
  readBy(groupId: string, seq: number): Promise<ReadBy> {
    return this.request({ type: "get_read_by", groupId, seq }, "read_by", groupId);
  }

  // ---- Connection ----------------------------------------------------------------------------

  private load(): Promise<void> {
    this.loaded ??= (async () => {
      const storage = this.o.storage;
      try {
        this.cursor = Number(await storage?.get(`${this.key}.cursor`)) || 0;
        const saved = JSON.parse((await storage?.get(`${this.key}.outbox`)) ?? "[]") as Entry[];
        // Sends made before the load finished go after the saved ones, as they were made later.
        const early = [...this.outboxMap.values()];
        this.outboxMap.clear();
        for (const entry of [...saved, ...early])
          this.outboxMap.set(entry.clientMsgId, { ...entry, sent: false });
      } catch (error) {
        this.emit("error", new ClientError("STORAGE", String(error)));
      }
      this.ready = true;
      this.outboxChanged();
    })();
    return this.loaded;
  }

  private async open(): Promise<void> {
    if (!this.wanted || this.ws !== undefined) return;
    this.setState(this.state === "closed" ? "connecting" : "reconnecting");
    let token: string;
    try {
      token = await this.o.getToken();
    } catch (error) {
      this.emit("error", new ClientError("TOKEN", `getToken failed: ${String(error)}`));
      this.retry(backoffDelay(this.attempt++));
      return;
    }
    if (!this.wanted || this.ws !== undefined) return;
    try {
      const part = (token.split(".")[1] ?? "").replace(/-/g, "+").replace(/_/g, "/");
      const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
      this.userId = (JSON.parse(new TextDecoder().decode(bytes)) as { sub?: string }).sub;
    } catch {
      // Not a JWT we can read: the server decides.
    }
    const base = typeof this.o.url === "string" ? this.o.url : this.o.url();
    const presence = this.o.presence === undefined ? "" : `&presence=${this.o.presence}`;
    const url = `${base}${base.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}&since=${this.cursor}${presence}`;
    let ws: WebSocketLike;
    try {
      ws = new this.Socket(url);
    } catch (error) {
      // A malformed URL: no retry can fix it.
      this.wanted = false;
      this.setState("closed");
      return this.emit("error", new ClientError("URL", String(error)));
    }
    this.ws = ws;
    this.lastRx = Date.now();
    // A connect that hangs (a black-holed address) counts as a dead link too.
    this.watch();
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this.lastRx = Date.now();
      this.setState("open");
      this.watch();
      for (const frame of this.reads.values()) this.write(frame);
      this.reads.clear();
      this.flush();
    };
    ws.onmessage = (event) => {
      if (ws === this.ws) this.onFrame(String(event.data));
    };
    ws.onclose = (event) => {
      if (ws === this.ws) this.onClose(event.code, event.reason);
    };
    // Every error is followed by a close, which decides what to do.
    ws.onerror = () => {};
  }

  private onClose(code: number, reason: string): void {
    this.dropped();
    this.emit("close", { code, reason });
    if (!this.wanted) {
      this.setState("closed");
      return;
    }
    if (code === 4001 || code === 1012) {
      // 4001: a fresh token (getToken runs before every connect); 1012: another node takes over.
      // Jittered, so a drained node's clients do not all come back in the same millisecond.
      this.retry(backoffDelay(0));
    } else if (shouldReconnect(code)) {
      this.retry(backoffDelay(this.attempt++));
    } else {
      this.wanted = false;
      this.setState("closed");
      this.emit(
        "error",
        new ClientError("CLOSED", `Closed with ${code}${reason ? `: ${reason}` : ""}`, {}, code),
      );
    }
  }

  /** The socket is gone: forget it, fail its unanswered requests, mark its sends for resending. */
  private dropped(): void {
    const ws = this.ws;
    this.ws = undefined;
    if (ws !== undefined) ws.onopen = ws.onmessage = ws.onclose = null;
    clearTimeout(this.pingTimer);
    const inflight = this.inflight;
    this.inflight = [];
    for (const request of inflight)
      request.ko?.(new ClientError("DISCONNECTED", "The connection closed before the answer."));
    for (const entry of this.outboxMap.values()) entry.sent = false;
  }

  private retry(delay: number): void {
    this.setState("reconnecting");
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.open();
    }, delay);
  }

  /**
   * Notices a dead link: when nothing arrived for pingIntervalMs, sends an app-level ping
   * (browsers cannot send WebSocket pings); when nothing at all arrives within pongTimeoutMs of it
   * (or of starting to connect), drops the socket and reconnects, without waiting for a closing
   * handshake that cannot arrive. `lastRx` is the last sign of life, or the last ping sent.
   */
  private watch(): void {
    clearTimeout(this.pingTimer);
    this.pingTimer = setTimeout(
      () => {
        const ws = this.ws;
        if (ws === undefined) return;
        if (Date.now() - this.lastRx < this.limit()) return this.watch();
        if (this.waiting()) {
          ws.close();
          return this.onClose(1006, "no answer");
        }
        this.write({ type: "ping" }, { t: "pong" });
        this.lastRx = Date.now();
        this.watch();
      },
      this.limit() - (Date.now() - this.lastRx),
    );
  }

  /** Whether an answer is due: the socket is still connecting, or a ping is unanswered. */
  private waiting(): boolean {
    return this.ws?.readyState !== OPEN || this.inflight.some((request) => request.t === "pong");
  }

  /** How long the link may stay silent. */
  private limit(): number {
    return this.waiting() ? (this.o.pongTimeoutMs ?? 10_000) : (this.o.pingIntervalMs ?? 25_000);
  }

  // ---- Frames --------------------------------------------------------------------------------

  private onFrame(text: string): void {
    this.lastRx = Date.now();
    let frame: WireFrame;
    try {
      frame = JSON.parse(text) as WireFrame;
    } catch {
      return;
    }
    switch (frame.type) {
      case "direct_message":
      case "group_message":
        this.onMessage(frame["message"] as ChatMessage | GroupMessage, frame["position"] as number);
        return;
      case "message_ack":
        this.onAck(frame as unknown as Ack);
        return;
      case "group": {
        const group = frame["group"] as GroupInfo;
        this.take(
          (r) => r.t === "group" && (r.g ? r.g === group.groupId : group.createdBy === this.userId),
        )?.ok?.(frame);
        this.emit("group", group);
        return;
      }
      case "synced": {
        const synced = frame as unknown as Synced;
        // The server's position, even if lower: it lost its inbox, and new messages start there.
        this.cursor = synced.position;
        this.attempt = 0;
        this.saveCursor();
        this.sendAck();
        this.emit("synced", synced);
        return;
      }
      case "presence":
      case "receipt":
      case "typing":
        this.emit(frame.type, frame as never);
        return;
      case "token_expiring":
        // The server renews tokens in place: no reconnect, nothing lost. A server without it
        // closes with 4001 instead, and the reconnect asks getToken.
        void this.refresh();
        return;
      case "error":
        this.onError(frame as unknown as WireError);
        return;
      default: {
        const index = this.inflight.findIndex((request) => request.t === frame.type);
        if (index >= 0) this.inflight.splice(index, 1)[0]?.ok?.(frame);
      }
    }
  }

  /**
   * A direct or group message: one inbox, one cursor, one set of seen ids for both (ids are
   * UUIDs, so a direct message's and a group entry's never collide).
   */
  private onMessage(message: ChatMessage | GroupMessage, position: number | undefined): void {
    const entry =
      message.clientMsgId === undefined ? undefined : this.outboxMap.get(message.clientMsgId);
    const group = "groupId" in message;
    if (entry !== undefined && position !== undefined) {
      // Our own unacked send, replayed: it was stored before the ack was lost. Settle it here.
      this.onAck({
        messageId: message.id,
        ...(group ? { groupId: message.groupId } : { to: message.to }),
        timestamp: message.timestamp,
        status: "queued",
        seq: message.seq,
        position,
        clientMsgId: entry.clientMsgId,
      } as Ack);
    } else if (!this.seen.has(message.id) && (position === undefined || position > this.cursor)) {
      this.remember(message.id);
      if (group) this.emit("groupMessage", message);
      else this.emit("message", message);
    }
    // Advanced after the handlers ran: a crash inside one replays the message next time.
    if (position !== undefined && position > this.cursor) {
      this.cursor = position;
      this.saveCursor();
      if (++this.unacked >= (this.o.ackEvery ?? 50)) this.sendAck();
      else this.ackTimer ??= setTimeout(() => this.sendAck(), this.o.ackDelayMs ?? 500);
    }
  }

  private onAck(ack: Ack): void {
    this.remember(ack.messageId);
    this.take((request) => request.id === ack.clientMsgId);
    const entry = this.outboxMap.get(ack.clientMsgId);
    if (entry === undefined) return;
    this.sendFailures = 0;
    this.settle(entry)?.[0](ack as never);
    this.emit("ack", ack);
  }

  private onError(frame: WireError): void {
    const error = new ClientError(frame.code, frame.message, frame);
    const { code, limit, clientMsgId, groupId } = frame;
    // Answers come in request order, but only some errors name their request: the others are
    // matched to the oldest request that can get that error. A refusal naming a group answers
    // the oldest read or command about it, or none: a mark_read or typing has no answer to wait
    // for, and its refusal must not fail another request.
    const request =
      clientMsgId !== undefined
        ? this.take((r) => r.id === clientMsgId)
        : groupId !== undefined
          ? this.take((r) => r.id === undefined && r.g === groupId)
          : code === "UNAUTHORIZED"
            ? this.take((r) => r.t === "refreshed")
            : code === "RATE_LIMITED"
              ? this.take((r) =>
                  limit === "reads"
                    ? READS.includes(r.t)
                    : limit === "refresh"
                      ? r.t === "refreshed"
                      : r.id !== undefined,
                )
              : // A group refusal without a clientMsgId is never a send's: a refused group send
                // names its clientMsgId.
                this.take(
                  (r) => r.t !== "pong" && !(r.id !== undefined && GROUP_REFUSALS.includes(code)),
                );
    const entry = this.outboxMap.get(request?.id ?? clientMsgId ?? "");
    if (entry !== undefined) {
      if (RETRYABLE.includes(code)) {
        // Maybe stored (outcome "unknown") or certainly not: either way the same clientMsgId
        // makes the resend safe. Later sends wait behind it, so order holds.
        entry.sent = false;
        this.hold(frame.retryAfterMs ?? backoffDelay(this.sendFailures++));
      } else {
        this.settle(entry)?.[1](error);
      }
    } else {
      request?.ko?.(error);
    }
    this.emit("error", error);
  }

  private async refresh(): Promise<void> {
    try {
      const token = await this.o.getToken();
      this.write({ type: "refresh", token }, { t: "refreshed" });
    } catch (error) {
      this.emit("error", new ClientError("TOKEN", `getToken failed: ${String(error)}`));
    }
  }

  // ---- Outbox, cursor, acks ------------------------------------------------------------------

  /** Writes every outbox entry not yet on this connection, oldest first, unless held. */
  private flush(): void {
    if (this.holdTimer !== undefined || this.ws?.readyState !== OPEN) return;
    for (const entry of this.outboxMap.values()) {
      if (entry.sent) continue;
      entry.sent = true;
      // `to` or `groupId`, whichever the entry has: the frame is the entry less its bookkeeping.
      const { sent: _, createdAt: __, ...fields } = entry;
      this.write(
        { type: entry.groupId === undefined ? "direct_message" : "group_message", ...fields },
        { t: "message_ack", id: entry.clientMsgId },
      );
    }
  }

  private hold(delay: number): void {
    clearTimeout(this.holdTimer);
    this.holdTimer = setTimeout(() => {
      this.holdTimer = undefined;
      this.flush();
    }, delay);
  }

  /** Takes an entry out of the outbox; returns its promise's resolve and reject, if it has one. */
  private settle(entry: Entry): [(ack: never) => void, (error: ClientError) => void] | undefined {
    const id = entry.clientMsgId;
    const waiter = this.waiters.get(id);
    this.waiters.delete(id);
    this.outboxMap.delete(id);
    this.outboxChanged();
    return waiter;
  }

  private outboxChanged(): void {
    const entries = this.pending();
    if (this.ready) this.save("outbox", JSON.stringify(entries));
    this.emit("outbox", entries);
  }

  private saveCursor(): void {
    this.save("cursor", String(this.cursor));
  }

  private save(name: string, value: string): void {
    try {
      void Promise.resolve(this.o.storage?.set(`${this.key}.${name}`, value)).catch(() => {});
    } catch {
      // A storage that throws loses persistence, never the message.
    }
  }

  /** Tells the server this device processed its inbox up to the cursor (batched). */
  private sendAck(): void {
    clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    this.unacked = 0;
    if (this.cursor > this.ackedUpTo && this.write({ type: "ack", upTo: this.cursor }))
      this.ackedUpTo = this.cursor;
  }

  private remember(id: string): void {
    this.seen.add(id);
    if (this.seen.size > SEEN_MAX) this.seen.delete(this.seen.values().next().value as string);
  }

  // ---- Plumbing ------------------------------------------------------------------------------

  private request<T>(frame: object, answer: string, g?: string): Promise<T> {
    return new Promise((ok, ko) => {
      if (!this.write(frame, { t: answer, g, ok: ok as (frame: WireFrame) => void, ko }))
        ko(new ClientError("OFFLINE", "Not connected."));
    });
  }

  private async groupCommand(frame: object, groupId: string): Promise<GroupInfo> {
    return (await this.request<{ group: GroupInfo }>(frame, "group", groupId)).group;
  }

  /** Sends a frame if the socket is open; `answer` registers what the server will answer. */
  private write(frame: object, answer?: Pending): boolean {
    const ws = this.ws;
    if (ws?.readyState !== OPEN) return false;
    ws.send(JSON.stringify(frame));
    if (answer !== undefined) this.inflight.push(answer);
    return true;
  }

  /** Removes and returns the oldest pending request that `match` accepts. */
  private take(match: (request: Pending) => boolean): Pending | undefined {
    const index = this.inflight.findIndex(match);
    return index < 0 ? undefined : this.inflight.splice(index, 1)[0];
  }

  private setState(state: ConnectionState): void {
    if (state === this.state) return;
    this.state = state;
    this.emit("state", state);
  }

  private emit<K extends keyof ClientEvents>(type: K, value: ClientEvents[K]): void {
    for (const listener of this.listeners.get(type) ?? []) {
      try {
        (listener as Listener<ClientEvents[K]>)(value);
      } catch (error) {
        // One app handler's bug must not stop the others, or the cursor.
        if (type !== "error") this.emit("error", new ClientError("HANDLER", String(error)));
      }
    }
  }
}

/** A frame's fields naming `peer`: `{ [field]: user }` for a user, `{ groupId }` for a group. */
function target(peer: Peer, field: "with" | "to"): object {
  return typeof peer === "string" ? { [field]: peer } : { groupId: peer.groupId };
}

/** A clientMsgId: a UUID where the platform makes them (secure contexts, Node), else random hex. */
function newId(): string {
  const crypto = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  return (
    crypto?.randomUUID?.() ??
    `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`
  );
}
