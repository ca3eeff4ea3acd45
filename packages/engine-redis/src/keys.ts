/**
 * Key and channel naming of the Redis engine. Every key and channel starts with the configured
 * prefix (REDIS_KEY_PREFIX, default `mrezhen:`), so deployments and test runs can share a Redis.
 *
 * Layout (`<p>` = prefix):
 *
 * | key                          | type   | contents                                              |
 * |------------------------------|--------|-------------------------------------------------------|
 * | `<p>msg:<messageId>`         | string | the stored message text (protocol `encodeMessage`);   |
 * |                              |        | PX retention.messageTtlMs                             |
 * | `<p>conv-seq:<conversation>` | string | last conversation `seq` handed out (INCR)             |
 * | `<p>conv-log:<conversation>` | list   | history: `<seq>\|<message id>` entries in seq order   |
 * |                              |        | (capped, PX ttl †)                                    |
 * | `<p>inbox-pos:<userId>`      | string | last inbox position handed out to the user (INCR)     |
 * | `<p>inbox-log:<userId>`      | list   | inbox: `<position>\|<message id>` entries in position |
 * |                              |        | order (B2 sync; capped, PX ttl †)                     |
 * | `<p>queue:<userId>`          | zset   | offline queue: score recipient position → message id  |
 * |                              |        | (capped, PX ttl †)                                    |
 * | `<p>idem:<n>:<from><cmid>`   | string | idempotency record of (from, clientMsgId), n = the    |
 * |                              |        | length of `from`: the original append's result (see   |
 * |                              |        | APPEND in scripts.ts); PX IDEMPOTENCY_TTL_MS          |
 * | `<p>convs:<userId>`          | zset   | the user's conversations: other user → the user's     |
 * |                              |        | inbox position of their last message (capped ‡)       |
 * | `<p>conv-last:<userId>`      | hash   | other user → id of the conversation's last message    |
 * |                              |        | (its fields come and go with the `convs` members)     |
 * | `<p>unread:<userId>`         | hash   | other user → messages from them above the read mark   |
 * | `<p>acked:<userId>`          | string | highest inbox position any device of the user acked   |
 * | `<p>delivered:<userId>`      | hash   | other user → highest seq of theirs the user acked     |
 * | `<p>read:<userId>`           | hash   | other user → the user's read watermark (a seq)        |
 * | `<p>receipts:<userId>`       | hash   | `<kind>` + "\|" + sender → the latest receipt frame   |
 * |                              |        | of that kind from that sender, for the user's sync    |
 * | `<p>presence:online`         | set    | users with at least one connection anywhere           |
 * | `<p>presence:version`        | string | changes of `presence:online` so far (INCR): the       |
 * |                              |        | version of each presence delta (scripts.ts, codec.ts) |
 * | `<p>presence:count`          | hash   | user → connections on all nodes                       |
 * | `<p>presence:node:<nodeId>`  | hash   | user → connections on that node                       |
 * | `<p>nodes`                   | set    | node ids that may own presence entries                |
 * | `<p>node-alive:<nodeId>`     | string | liveness: PX TTL = nodeTtlMs, refreshed by heartbeat  |
 * | `<p>rate-log:<key>`          | list   | rate-limit window: times (µs, Redis clock) of the     |
 * |                              |        | last allowed actions, oldest first; PX windowMs       |
 * | `<p>quota:<userId>`          | hash   | the user's daily quotas (APPEND): `day` (UTC day      |
 * |                              |        | number, Redis clock), `conversations` started and     |
 * |                              |        | `bytes` stored that day; expires at the next midnight |
 *
 * † Capped at retention.maxEntries newest entries on every write (LTRIM, ZREMRANGEBYRANK for the
 * queue), and given PX retention.messageTtlMs on every write: every entry is at most that old, so
 * when the index expires, all its bodies have expired too. Entries whose body expired first are
 * skipped by every read, and removed lazily: from the queue when read, from a log when they reach
 * its head (bodies expire oldest first; with nodes of different TTLs some may wait there). Bodies
 * are never deleted except by their TTL: an inbox and a conversation share them, and either may
 * still need one the other has trimmed.
 * The logs are lists because appending is the hot path: RPUSH is O(1), where ZADD on a small
 * (listpack) sorted set scans it. Earlier versions kept sorted sets under `conv:` and `inbox:`;
 * the new names keep the two apart (those expire by themselves).
 * ‡ Capped likewise, without a TTL: a conversation whose last text expired leaves `convs` and
 * `conv-last` when conversations() comes across it.
 * Counters, watermarks and conversation lists (`conv-seq`, `inbox-pos`, `acked`, `delivered`,
 * `read`, `unread`, `receipts`, `convs`, `conv-last`) have no TTL: a seq or position must never
 * be handed out twice, nor a watermark lowered. They grow with the number of users and of pairs
 * that ever talked (a few small fields per pair), not with traffic.
 *
 * | channel            | payload                                                             |
 * |--------------------|---------------------------------------------------------------------|
 * | `<p>user:<userId>` | user events (codec.ts); subscribed while the user is on this node   |
 * | `<p>broadcast`     | presence deltas (codec.ts); every node subscribes at start          |
 *
 * `<conversation>` is `conversationKey(a, b)` from @mrezhen/engine, so both engines agree.
 *
 * Why the variable part is always last: ids are arbitrary strings (a user id may contain `:`),
 * so `inbox:<user>:pos` could collide with the inbox of a user named `<user>:pos`. With a fixed
 * head and the id as the tail, two different heads never produce the same key.
 *
 * Scripts that reach keys named by data they read (other nodes' hashes in the sweep, message
 * texts by id in history and queue reads, the receipts and channel of a sender read from a
 * message body in acknowledge) get the key heads from here as arguments, so the names
 * live in this file only. Such keys are not declared in KEYS: the layout assumes a standalone
 * Redis (or a primary with replicas), not Redis Cluster.
 */
import { conversationKey } from "@mrezhen/engine";

export class Keys {
  readonly presenceOnline: string;
  readonly presenceCount: string;
  readonly presenceVersion: string;
  readonly nodes: string;
  readonly broadcastChannel: string;
  /** This node's presence hash and liveness key. */
  readonly presenceThisNode: string;
  readonly aliveThisNode: string;
  /** `<p>user:`; a user channel is this plus the user id. */
  readonly userChannelHead: string;
  /** Key heads for scripts that append an id read from Redis. */
  readonly messageHead: string;
  /** `<p>receipts:`, for the acknowledge script (the receipts key of a sender read from a body). */
  readonly receiptsHead: string;
  readonly presenceNodeHead: string;
  readonly aliveHead: string;

  constructor(
    readonly prefix: string,
    nodeId: string,
  ) {
    this.presenceOnline = `${prefix}presence:online`;
    this.presenceCount = `${prefix}presence:count`;
    this.presenceVersion = `${prefix}presence:version`;
    this.nodes = `${prefix}nodes`;
    this.broadcastChannel = `${prefix}broadcast`;
    this.messageHead = `${prefix}msg:`;
    this.receiptsHead = `${prefix}receipts:`;
    this.presenceNodeHead = `${prefix}presence:node:`;
    this.aliveHead = `${prefix}node-alive:`;
    this.presenceThisNode = this.presenceNode(nodeId);
    this.aliveThisNode = this.alive(nodeId);
    this.userChannelHead = `${prefix}user:`;
  }

  message(messageId: string): string {
    return this.messageHead + messageId;
  }

  /** The conversation part of the conversation keys: one per unordered pair of users. */
  conversationOf(userA: string, userB: string): string {
    return conversationKey(userA, userB);
  }

  conversationSeq(conversation: string): string {
    return `${this.prefix}conv-seq:${conversation}`;
  }

  conversationLog(conversation: string): string {
    return `${this.prefix}conv-log:${conversation}`;
  }

  inboxPosition(userId: string): string {
    return `${this.prefix}inbox-pos:${userId}`;
  }

  inboxLog(userId: string): string {
    return `${this.prefix}inbox-log:${userId}`;
  }

  queue(userId: string): string {
    return `${this.prefix}queue:${userId}`;
  }

  /** The length prefix makes (from, clientMsgId) unambiguous for any ids (as the memory engine). */
  idempotency(from: string, clientMsgId: string): string {
    return `${this.prefix}idem:${from.length}:${from}${clientMsgId}`;
  }

  conversations(userId: string): string {
    return `${this.prefix}convs:${userId}`;
  }

  conversationLast(userId: string): string {
    return `${this.prefix}conv-last:${userId}`;
  }

  unread(userId: string): string {
    return `${this.prefix}unread:${userId}`;
  }

  acked(userId: string): string {
    return `${this.prefix}acked:${userId}`;
  }

  delivered(userId: string): string {
    return `${this.prefix}delivered:${userId}`;
  }

  read(userId: string): string {
    return `${this.prefix}read:${userId}`;
  }

  receipts(userId: string): string {
    return this.receiptsHead + userId;
  }

  presenceNode(nodeId: string): string {
    return this.presenceNodeHead + nodeId;
  }

  alive(nodeId: string): string {
    return this.aliveHead + nodeId;
  }

  /** A list (earlier versions kept a sorted set under `rate:`, left to expire by itself). */
  rate(key: string): string {
    return `${this.prefix}rate-log:${key}`;
  }

  quota(userId: string): string {
    return `${this.prefix}quota:${userId}`;
  }

  userChannel(userId: string): string {
    return this.userChannelHead + userId;
  }

  /** The user of a user channel, or undefined for any other channel. */
  userOfChannel(channel: string): string | undefined {
    return channel.startsWith(this.userChannelHead)
      ? channel.slice(this.userChannelHead.length)
      : undefined;
  }
}
