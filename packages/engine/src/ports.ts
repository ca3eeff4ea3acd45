/**
 * The engine ports: everything a node shares with the other nodes of a cluster. A node keeps only
 * its local socket map; all else goes through these interfaces. There are two engines: the memory
 * engine (one node, the default) and the Redis engine (any number of nodes). Both pass the same
 * contract suites (`@mrezhen/engine/contract`), which are the executable form of the guarantees
 * written on each method below.
 *
 * Every method may reject with {@link EngineUnavailableError} when the shared backend cannot be
 * reached; callers must then not claim success to a client (no ack).
 */

/**
 * Thrown when this engine, as configured, does not offer a feature at all (not an outage: a
 * retry gets the same answer). The message says which feature, for the client.
 */
export class EngineFeatureUnavailableError extends Error {
  override readonly name = "EngineFeatureUnavailableError";
}

/** Thrown (or rejected with) when the engine's backend cannot serve right now. Retryable. */
export class EngineUnavailableError extends Error {
  override readonly name = "EngineUnavailableError";
  /**
   * Whether the request may have taken effect anyway: it reached the backend, and the answer was
   * lost (the connection dropped, or timed out, after the request was written). False only when
   * the request certainly did nothing (never written, or refused before it ran). A send that
   * fails so must be retried with the same clientMsgId, which makes the retry safe.
   */
  readonly mayHaveSucceeded: boolean;

  constructor(message: string, options: { cause?: unknown; mayHaveSucceeded?: boolean } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.mayHaveSucceeded = options.mayHaveSucceeded ?? true;
  }
}

// ---------------------------------------------------------------------------------------------
// Broker: routes events to a user's connections on whichever nodes hold them.

/** An event for one user's connections on this node. */
export type UserEvent = MessageEvent | FrameEvent | ControlEvent;

/**
 * An order from the service's backend (the server API) about a user's connections, handled by
 * every node that holds some: never stored, never queued (a user with no connection has nothing
 * to close; a revocation is also kept in {@link RevocationStore} for later upgrades).
 * - `disconnect`: close every connection of the user with `code` and `reason`;
 * - `revoke`: close (4001) the connections whose token was issued before `before`.
 */
export interface ControlEvent {
  readonly kind: "control";
  readonly action: "disconnect" | "revoke";
  /** The close code (disconnect), 4000 to 4999. */
  readonly code?: number;
  readonly reason?: string;
  /** revoke: tokens issued before this time (ms since the epoch) are refused. */
  readonly before?: number;
}

/** A ready-to-send frame for a user's connections (receipts, typing): never stored, never queued. */
export interface FrameEvent {
  readonly kind: "frame";
  readonly frame: string;
}

/** A stored direct message, for the recipient or the sender's other connections. */
export interface MessageEvent {
  readonly kind: "message";
  readonly messageId: string;
  /** The message as stored (protocol `encodeMessage`), spliced into frames without re-encoding. */
  readonly messageJson: string;
  /** The inbox position of this message for the user the event is addressed to. */
  readonly position: number;
  /** A connection that must not get this event (the sender's own connection gets an ack instead). */
  readonly excludeConnId?: string;
  /** Set for a group message: its group (the frame is then a `group_message`). */
  readonly groupId?: string;
}

/** A user came online (first connection anywhere) or went offline (last one closed). */
export interface PresenceChange {
  readonly userId: string;
  readonly status: "online" | "offline";
  /**
   * Every user online right after this change, as this node sees it. A live view: read it during
   * the call, it changes afterwards. Building the protocol's list from it costs O(online users),
   * so a node does it only when one of its connections wants presence frames.
   */
  readonly online: ReadonlySet<string>;
  /**
   * The change's number in the engine's total order of changes, when the engine numbers them
   * (both engines do for the changes they announce as they happen; not for the changes a node
   * infers after it lost track, which other nodes announced with their number). Consecutive
   * changes have increasing numbers, so a receiver can order events about one user by it.
   */
  readonly version?: number;
}

/** Receives what the broker routes to this node. Called synchronously; must not throw. */
export interface BrokerHandler {
  /**
   * An event for `userId`, delivered only while this node is subscribed to that user or (a
   * group's entries and frames, which an engine may route by presence) holds a registered
   * connection of it; either way in the order the engine published the user's events.
   */
  onUserEvent(userId: string, event: UserEvent): void;
  /**
   * Every presence change, on every node, in one total order (the order in which the changes
   * happened), each with the online set as it stood right after it.
   */
  onPresence(change: PresenceChange): void;
}

export interface Broker {
  /** Sets the one handler of this node. Call once, before the first subscribe. */
  setHandler(handler: BrokerHandler): void;
  /**
   * Starts routing `userId`'s events to this node. Resolves once the subscription is active:
   * every event published after that reaches this node, in publish order per user.
   * Reference counting (first/last local connection) is the caller's job.
   */
  subscribe(userId: string): Promise<void>;
  /** Stops routing `userId`'s events to this node. Events already in flight may still arrive. */
  unsubscribe(userId: string): Promise<void>;
  /**
   * Routes an ephemeral frame (e.g. typing) to `userId`'s connections on every node, at most
   * once: nothing is stored, and a user with no connection simply does not get it.
   */
  publishFrame(userId: string, frame: string): Promise<void>;
  /**
   * Routes a {@link ControlEvent} to `userId`'s connections on every node, at most once, like
   * publishFrame (the server API's disconnect and revoke).
   */
  publishControl(userId: string, event: ControlEvent): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Presence: who is online, cluster-wide.

/** What {@link PresenceStore.connect} learned in the step that registered the connection. */
export interface Registration {
  /**
   * Whether the user's offline queue may hold messages. False only when the store found it
   * empty atomically with the registration: messages are queued only for a user with no
   * connection (decided atomically with presence), so the queue stays empty while this
   * connection is registered, and reading it now would find nothing. True when the store cannot
   * tell.
   */
  readonly queueMayHoldMessages: boolean;
}

export interface PresenceStore {
  /**
   * Registers one connection of `userId` on this node. When it is the user's first connection
   * anywhere, the user becomes online and every node's handler gets a {@link PresenceChange},
   * decided atomically with the change: changes are totally ordered, and each one's online set
   * matches the state it announces. Costs O(1), however many users are online.
   */
  connect(userId: string): Promise<Registration>;
  /** Unregisters one connection; the user's last one anywhere makes it offline, announced likewise. */
  disconnect(userId: string): Promise<void>;
  /** Every user with at least one connection anywhere, in no particular order. */
  onlineUsers(): Promise<string[]>;
  /**
   * This node's view of the online set: exactly the set the {@link PresenceChange}s handed to
   * this node's broker handler so far leave (the same live set as `PresenceChange.online`). Read
   * synchronously, O(1) per lookup, no round trip; on the Redis engine it may lag the store by
   * the broadcast's latency. Reading it and acting in the same synchronous step is consistent
   * with the changes the handler gets afterwards: nothing falls between the two.
   */
  readonly view: ReadonlySet<string>;
  /**
   * Each asked user's connections on all nodes (0 when offline), in the order asked: one read
   * of the store, O(asked), for the server API.
   */
  connectionCounts(users: readonly string[]): Promise<number[]>;
}

// ---------------------------------------------------------------------------------------------
// Revocations: tokens a backend revoked (the server API's revoke), enforced at every upgrade.

export interface RevocationStore {
  /**
   * From now on, `userId`'s tokens issued before `before` (ms since the epoch) are refused, on
   * every node. Never moves an earlier revocation back: the latest `before` wins only if later.
   * Resolves once stored; each node's {@link revokedBefore} sees it within the broadcast's
   * latency (a few milliseconds on Redis).
   */
  revoke(userId: string, before: number): Promise<void>;
  /**
   * The time before which `userId`'s tokens are refused, if any: read synchronously from this
   * node's copy, so that checking it costs an upgrade no round trip.
   */
  revokedBefore(userId: string): number | undefined;
}

// ---------------------------------------------------------------------------------------------
// Service events: a durable queue of events for the backend's webhook (at least once).

/** An event taken from the queue by this node's worker. */
export interface QueuedEvent {
  /** The queue's id of the entry (for ack); not the event's own id, which is in the payload. */
  readonly entryId: string;
  /** The event as published (JSON text). */
  readonly payload: string;
  /** When it was published, ms since the epoch. */
  readonly publishedAt: number;
  /** True when it was taken over from another worker that held it too long (a dead node). */
  readonly claimed: boolean;
}

export interface EventQueueStats {
  /** Events published and not yet acknowledged. */
  readonly depth: number;
  /** Age (ms) of the oldest of them; 0 when there is none. */
  readonly oldestAgeMs: number;
}

/**
 * A durable queue of service events for the webhook workers of every node. An event is handed
 * to one worker at a time, and stays in the queue until that worker acknowledges it; one that a
 * worker holds unacknowledged for longer than the claim timeout (the node died) is handed to
 * another. So every published event is delivered at least once, even when nodes die.
 */
export interface EventQueue {
  /**
   * Adds an event. With `presenceVersion` (a PresenceChange's version), it is added once for
   * the whole cluster however many nodes publish it, and only if no later version was: every
   * node sees every change and may publish it, exactly one of them is stored. Resolves once
   * stored.
   */
  publish(payload: string, presenceVersion?: number): Promise<void>;
  /**
   * Up to `count` events for this node's worker: ones another worker held for longer than
   * `claimIdleMs` first, then new ones, waiting up to `waitMs` when there are none.
   */
  take(count: number, waitMs: number, claimIdleMs: number): Promise<QueuedEvent[]>;
  /** Keeps events this worker holds (retrying them later) from being taken by another. */
  keep(entryIds: readonly string[]): Promise<void>;
  /** Removes delivered (or given up) events. */
  acknowledge(entryIds: readonly string[]): Promise<void>;
  stats(): Promise<EventQueueStats>;
}

// ---------------------------------------------------------------------------------------------
// Messages: history, inboxes, offline queues.

export interface AppendInput {
  readonly id: string;
  readonly from: string;
  readonly to: string;
  readonly content: string;
  readonly timestamp: string;
  /** The sending connection: it gets an ack, not a copy of the message. */
  readonly senderConnId: string;
  /** The sender's idempotency key (B2): see {@link MessageStore.append}. */
  readonly clientMsgId?: string;
}

export interface AppendResult {
  /** The stored message's id: the input's, or the original's when `duplicate`. */
  readonly messageId: string;
  /** The stored message's timestamp (the original's when `duplicate`). */
  readonly timestamp: string;
  /** True when this was a retry of a `clientMsgId` already stored: nothing was stored or routed. */
  readonly duplicate: boolean;
  /** Conversation sequence number: from 1, gap-free, in append order. */
  readonly seq: number;
  /** `queued` when the recipient had no connection anywhere at the moment of the append. */
  readonly status: "delivered" | "queued";
  readonly senderPosition: number;
  readonly recipientPosition: number;
}

/**
 * What appendIfAllowed answers when a limit of the sender refuses the message: the sliding
 * rate-limit window (`rate`) or one of the daily quotas ({@link QuotaOptions}).
 */
export interface RateRefusal {
  readonly refused: true;
  /** How long until one more would be allowed, in milliseconds. */
  readonly retryAfterMs: number;
  readonly limit: RefusedLimit;
}

export type RefusedLimit = "rate" | "new_conversations_per_day" | "bytes_per_day";

/**
 * Per-sender daily quotas, counted by appendIfAllowed in the same atomic step as the store.
 * The window is the UTC day (a fixed window: one counter per user, reset when the day changes),
 * not a sliding 24 h, which would need a log of every counted message: a sender can spend a
 * day's quota just before midnight and another just after, so any 24 h see at most twice it.
 */
export interface QuotaOptions {
  /**
   * Conversations a user may start per UTC day: messages to someone they never exchanged a
   * message with (the pair has no seq yet). Replies and messages to known peers do not count.
   */
  readonly newConversationsPerDay: number;
  /** UTF-8 bytes of stored message texts (protocol encodeMessage) a user may send per UTC day. */
  readonly bytesPerDay: number;
}

/** Quotas set out of the way: for engines made without any (tests, the benchmark). */
export const NO_QUOTAS: QuotaOptions = {
  newConversationsPerDay: Number.MAX_SAFE_INTEGER,
  bytesPerDay: Number.MAX_SAFE_INTEGER,
};

/** Milliseconds per day: the quota window of a time t (ms since the epoch) is day floor(t / DAY_MS). */
export const DAY_MS = 86_400_000;

/** A message taken from an offline queue, with the recipient's inbox position of it. */
export interface QueuedMessage {
  readonly messageId: string;
  readonly messageJson: string;
  readonly position: number;
  /** Set for an entry of a group's log (a group message or membership event). */
  readonly groupId?: string;
}

/** Part of a user's inbox (B2), for a sync. */
export interface InboxPage {
  /** Entries after the asked position, in position order (at most the asked limit). */
  readonly entries: QueuedMessage[];
  /** The oldest position still kept; older ones were trimmed by retention (1 when none was). */
  readonly oldest: number;
  /** The newest position handed out so far (0 for an empty inbox). */
  readonly newest: number;
}

export interface HistoryPage {
  /** Stored message texts, oldest first. */
  readonly messages: string[];
  /** Whether older messages exist before the first one returned. */
  readonly hasMore: boolean;
}

export interface ConversationSummary {
  /** The other user; for a group, the group's id (see `group`). */
  readonly with: string;
  /** Set for a group: its name (`with` is then the group id). */
  readonly group?: { readonly name: string };
  readonly lastMessageJson: string;
  /** Messages from `with` whose seq is above this user's read watermark. */
  readonly unread: number;
}

/** How long messages and idempotency keys are kept, and how large indexes may grow. */
export interface RetentionOptions {
  /** Messages (history, inboxes, queues) older than this are deleted. */
  readonly messageTtlMs: number;
  /** Each inbox, offline queue and conversation index keeps at most this many newest entries. */
  readonly maxEntries: number;
}

/** A retried `clientMsgId` is recognised for at least this long (the protocol asks for 24 h). */
export const IDEMPOTENCY_TTL_MS = 25 * 60 * 60 * 1000;

export interface MessageStore {
  /**
   * Stores a direct message and routes it, as one atomic step:
   * - assigns the next conversation `seq` and the next inbox `position` of sender and recipient;
   * - appends it to the conversation's history;
   * - if the recipient has no connection anywhere (PresenceStore of the same engine), appends it
   *   to the recipient's offline queue and answers `queued`; otherwise publishes a
   *   {@link MessageEvent} to the recipient and answers `delivered`;
   * - publishes a copy to the sender's other connections (excluding `senderConnId`).
   * Resolves only once the message is stored: a resolved append is never lost (with a Redis
   * that persists, see the README). The append is decided atomically against presence, so a
   * recipient connecting concurrently either sees the message in its queue or gets it live,
   * never neither.
   *
   * Idempotent per (`from`, `clientMsgId`) for {@link IDEMPOTENCY_TTL_MS}, whichever node the
   * retry reaches: a retry stores and routes nothing and resolves with the original's result
   * (`duplicate: true`). The check and the store are one atomic step, so of two concurrent
   * sends with the same key exactly one is stored.
   *
   * A rejected append may or may not have been stored (a reply lost with the connection): the
   * caller must not ack; the client retries, with a clientMsgId to make that safe.
   */
  append(input: AppendInput): Promise<AppendResult>;
  /**
   * {@link append}, behind the sender's rate limit and daily quotas, in the same atomic step:
   * the engine's {@link RateLimiter} (key `input.from`) counts one action, the sender's quotas
   * ({@link QuotaOptions}) count the stored text's bytes and, when the pair never talked, one new
   * conversation, and the message is stored; or, when the window is full or a quota would be
   * exceeded, nothing is counted, stored or routed and this resolves a {@link RateRefusal}
   * naming the limit (a quota refusal's retryAfterMs runs to the next UTC midnight). A retried
   * `clientMsgId` already stored is answered as by append (`duplicate: true`) without counting.
   * The hot path of a send: one round trip where a consume, then an append, took two.
   */
  appendIfAllowed(input: AppendInput): Promise<AppendResult | RateRefusal>;
  /**
   * {@link appendIfAllowed} answered synchronously, by an engine whose store is in process (the
   * memory engine); throws where that rejects. Below saturation every message is its own I/O
   * event, and the promise, its continuation and the handler's own promise were a large part of
   * what a message cost there. Absent: the engine needs a round trip (Redis).
   */
  appendIfAllowedNow?(input: AppendInput): AppendResult | RateRefusal;
  /**
   * Messages between `userA` and `userB`, oldest first, as stored texts: the newest `limit`
   * of those with a seq below `before` (all, when `before` is undefined). Symmetric in its users.
   */
  history(userA: string, userB: string, limit: number, before?: number): Promise<HistoryPage>;
  /**
   * Up to `limit` entries of `userId`'s inbox after position `after`, in order (B2 sync). With
   * `maxBytes`, the page also ends at the entry that brings its texts to `maxBytes` (UTF-16 code
   * units of `messageJson`); it always holds at least one entry when one exists, however large.
   */
  readInbox(userId: string, after: number, limit: number, maxBytes?: number): Promise<InboxPage>;
  /**
   * A device of `userId` processed its inbox up to position `upTo`. For each conversation with
   * messages received in the newly covered positions, raises the user's delivered watermark to
   * the highest seq received there and publishes a delivered `receipt` frame to the other
   * party, at most once per raise. Acks at or below an earlier one change nothing.
   */
  acknowledge(userId: string, upTo: number): Promise<void>;
  /**
   * `userId` read its conversation with `other` up to seq `upTo` (capped at the conversation's
   * last seq): raises the read watermark and publishes a read `receipt` frame to `other` when it
   * rose. Never lowers it.
   */
  markRead(userId: string, other: string, upTo: number): Promise<void>;
  /** The latest receipt frames addressed to `userId`: one per conversation and kind (for sync). */
  receipts(userId: string): Promise<string[]>;
  /** `userId`'s conversations, most recent first, at most `limit`. */
  conversations(userId: string, limit: number): Promise<ConversationSummary[]>;
  /**
   * The users `userId` has a conversation with (its conversation index), most recent first, at
   * most `limit`: only the ids, O(limit), without reading any message. For presence: a
   * connection with `presence=contacts` hears about these users only.
   */
  contacts(userId: string, limit: number): Promise<string[]>;
  /**
   * A page of `userId`'s offline queue: up to `limit` queued messages with a position above
   * `after`, in position order, ending early at `maxBytes` as {@link readInbox} does. Reading
   * removes nothing: a message leaves the queue only through {@link removeQueued}, once the
   * connection it was written to confirmed that it arrived, so a connection cut (or a node
   * crash) in the middle of a flush loses nothing. Messages whose text retention deleted are
   * left out.
   */
  readQueued(
    userId: string,
    after: number,
    limit: number,
    maxBytes?: number,
  ): Promise<QueuedMessage[]>;
  /**
   * Removes the messages queued for `userId` at positions up to `upTo` (a flush confirmed them).
   * Idempotent. Only positions a flush has read can be there: while the user is online nothing
   * older is queued (see requeueIfOffline), and newer messages are above `upTo`.
   */
  removeQueued(userId: string, upTo: number): Promise<void>;
  /**
   * For a node that got a message event for a user with no connection on it (the user left
   * between append and delivery): queues the message for `userId` if, and only if, the user has
   * no connection anywhere now. Returns whether it queued. Keeps queue order by position.
   */
  requeueIfOffline(userId: string, message: QueuedMessage): Promise<boolean>;
}

// ---------------------------------------------------------------------------------------------
// Groups: a log per group, with members, delivered into every member's inbox.

/** A group's state (protocol GroupInfo). */
export interface GroupState {
  readonly groupId: string;
  readonly name: string;
  /** Current members, in the order they joined. */
  readonly members: readonly string[];
  /** Who may add and remove members: the creator first. */
  readonly admins: readonly string[];
  readonly createdBy: string;
  readonly createdAt: string;
}

/** Why a group operation was refused. Nothing was stored. */
export type GroupRefusalReason =
  /** No such group. */
  | "not_found"
  /** Not a member (or not an admin, for add and remove). */
  | "forbidden"
  /** The group is at GroupLimits.maxMembers. */
  | "group_full"
  /** A user (the actor or the added one) is at GroupLimits.maxGroupsPerUser. */
  | "too_many_groups";

/** Thrown by a GroupStore method that refuses: nothing was stored or routed. */
export class GroupRefusedError extends Error {
  override readonly name = "GroupRefusedError";
  constructor(
    readonly reason: GroupRefusalReason,
    message: string,
  ) {
    super(message);
  }
}

export interface GroupLimits {
  /** Members per group (GROUP_MAX_MEMBERS). */
  readonly maxMembers: number;
  /** Groups a user may be a member of (GROUP_MAX_PER_USER). */
  readonly maxGroupsPerUser: number;
  /**
   * Groups of at most this many members send per-member read receipts to every member; larger
   * ones only answer `get_read_by` (an aggregate), so that a read costs O(1) frames, not
   * O(members) (O(members²) for everyone reading).
   */
  readonly receiptsMaxMembers: number;
}

export const DEFAULT_GROUP_LIMITS: GroupLimits = {
  maxMembers: 1000,
  maxGroupsPerUser: 500,
  receiptsMaxMembers: 20,
};

/** The result of a stored membership change: the group after it, and its log entry. */
export interface GroupChange {
  readonly group: GroupState;
  /** The event's seq in the group's log. */
  readonly seq: number;
  /** The actor's inbox position of the event. */
  readonly position: number;
}

export interface GroupAppendInput {
  readonly id: string;
  readonly groupId: string;
  readonly from: string;
  readonly content: string;
  readonly timestamp: string;
  readonly senderConnId: string;
  readonly clientMsgId?: string;
}

export interface GroupAppendResult {
  readonly messageId: string;
  readonly timestamp: string;
  readonly duplicate: boolean;
  /** Group sequence number: from 1, gap-free, shared with the group's membership events. */
  readonly seq: number;
  /** `delivered` when another member had a connection anywhere, else `queued`. */
  readonly status: "delivered" | "queued";
  readonly senderPosition: number;
}

/**
 * Groups on the same delivery model as direct messages. A group has one log, numbered by a
 * gap-free `seq`, holding its messages and its membership events (created, joined, removed,
 * left, renamed) in one order. Every entry goes into the inbox of each user who is a member at
 * that seq (a removed or leaving member gets the event of its own removal, then nothing), with
 * the same positions, offline queue, replay and acks as a direct message: a member's stream has
 * each group's entries in seq order. Membership is decided in the same atomic step as the seq,
 * so a message and a removal racing each other are ordered: the message is before the removal
 * (and delivered to the removed member) or after it (and not), never both or neither.
 * Rejections: {@link GroupRefusedError} (nothing stored); {@link EngineUnavailableError} as for
 * append (a send may have been stored: retry with the same clientMsgId).
 */
export interface GroupStore {
  /** Creates a group of `createdBy` and `members`; its first entry is the `created` event. */
  create(input: {
    readonly groupId: string;
    readonly name: string;
    readonly createdBy: string;
    readonly members: readonly string[];
    readonly eventId: string;
    readonly timestamp: string;
  }): Promise<GroupChange>;
  /**
   * A membership change by `actor`: `add` and `remove` by an admin, `leave` by a member
   * (`userId` = actor), `rename` by a member. Adding a member or removing a non-member changes
   * nothing and answers the group as it is (seq 0).
   */
  change(input: {
    readonly groupId: string;
    readonly actor: string;
    readonly kind: "add" | "remove" | "leave" | "rename";
    readonly userId?: string;
    readonly name?: string;
    readonly eventId: string;
    readonly timestamp: string;
  }): Promise<GroupChange>;
  /** A group `userId` is a member of. */
  get(userId: string, groupId: string): Promise<GroupState>;
  /** The groups `userId` is a member of, at most `limit`. */
  groupsOf(userId: string, limit: number): Promise<GroupState[]>;
  /**
   * Stores a group message and routes it, as {@link MessageStore.appendIfAllowed}: the sender's
   * rate limit (shared with direct messages) counted in the same step, idempotent per (`from`,
   * `clientMsgId`) (a retry stores nothing and answers the original, `duplicate: true`), in the
   * inbox of every member, queued for those offline, published live to the others and to the
   * sender's other connections.
   */
  append(input: GroupAppendInput): Promise<GroupAppendResult | RateRefusal>;
  /**
   * The group's log, oldest first: the newest `limit` entries below seq `before`. A former
   * member reads up to its removal only.
   */
  history(userId: string, groupId: string, limit: number, before?: number): Promise<HistoryPage>;
  /**
   * `userId` read the group up to `upTo` (capped at its last seq); in a group of at most
   * receiptsMaxMembers members a read receipt frame goes to the other members.
   */
  markRead(userId: string, groupId: string, upTo: number): Promise<void>;
  /** How many members, the sender of `seq` aside, read the group up to `seq`; asked by a member. */
  readBy(userId: string, groupId: string, seq: number): Promise<{ count: number; members: number }>;
  /**
   * Sends an ephemeral frame (typing) to the members of a group `userId` is a member of,
   * `userId`'s own connections aside.
   */
  publishToMembers(userId: string, groupId: string, frame: string): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Rate limiting.

export interface RateDecision {
  readonly allowed: boolean;
  /** When refused: how long until one more would be allowed, in milliseconds. */
  readonly retryAfterMs: number;
}

export interface RateLimiter {
  /**
   * Counts one action of `key` if it fits the sliding window, atomically across nodes: of any
   * number of concurrent calls, exactly as many are allowed as the window has room for. A refused
   * call is not counted.
   */
  consume(key: string): Promise<RateDecision>;
}

// ---------------------------------------------------------------------------------------------
// The engine: the ports of one backend, built together because they share state.

export interface EngineHealth {
  readonly ok: boolean;
  /** Why not, when not ok (for /ready). */
  readonly reason?: string;
}

export interface Engine {
  /** "memory" or "redis": for logs and metrics. */
  readonly kind: string;
  readonly broker: Broker;
  readonly presence: PresenceStore;
  readonly messages: MessageStore;
  readonly rateLimiter: RateLimiter;
  readonly groups: GroupStore;
  readonly revocations: RevocationStore;
  readonly events: EventQueue;
  /** Whether the backend can serve now. Cheap: reads a flag kept up to date in the background. */
  health(): EngineHealth;
  /**
   * Commands the backend failed so far, for metrics (read at scrape time): `unavailable` could
   * not be served (connection down, timeout, a retryable reply such as LOADING or OOM), `reply`
   * were refused as wrong (a bug). Absent when there is no backend to fail (the memory engine).
   */
  commandErrors?(): { readonly unavailable: number; readonly reply: number };
  /** Releases connections and timers. Idempotent. */
  close(): Promise<void>;
}

export interface RateLimitOptions {
  /** Actions allowed per window. */
  readonly limit: number;
  readonly windowMs: number;
}
