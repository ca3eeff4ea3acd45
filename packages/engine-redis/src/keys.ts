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
 * | `<p>group-fanout-pending`    | set    | groups whose chunked fan-out queue is not empty       |
 * |                              |        | (standalone; groups.ts)                               |
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
 * | `<p>node:<nodeId>` | a group's entries and frames for that node's members (codec.ts);    |
 * |                    | the node subscribes at start (standalone Redis only)                |
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
 * live in this file only.
 *
 * ## Redis Cluster (REDIS_CLUSTER_NODES)
 *
 * In cluster mode every name carries a hash tag, so that what one script touches is in one
 * slot (Redis refuses a script whose keys are in several slots, and a script may only reach
 * keys of its own slot). The tags:
 *
 * | tag              | keys                                                 | why together          |
 * |------------------|------------------------------------------------------|-----------------------|
 * | `{u:<userId>}`   | inbox-pos, inbox-log, queue, convs, conv-last,       | a user's own state:   |
 * |                  | unread, acked, delivered, read, receipts, rate-log,  | every per-user script |
 * |                  | quota, idem (of the sender), the user's text copies  | (inbox, queue, ack,   |
 * |                  | `msg:{u:<userId>}<id>`, step markers `done-in:` /    | limits, one side of a |
 * |                  | `done-out:`; channel `user:{u:<userId>}`             | DM) is one slot       |
 * | `{u:<owner>}`    | the conversation's conv-seq, conv-log, `pending:`    | seq, history and the  |
 * |                  | (DMs not yet confirmed done on both users' sides)    | owner's side of a DM  |
 * |                  | and `read-marks:`; owner = the first of the two      | in one script: a DM   |
 * |                  | users in conversationKey order                       | spans two slots, not 3|
 * | `{p}`            | every presence key (online, count, version, nodes,   | presence scripts are  |
 * |                  | node hashes, liveness keys) and the broadcast channel| global by nature      |
 *
 * The names are `<p><kind>:{u:<id>}` (the id last, in the tag): a user id may contain `}`, and
 * then the tag is only the part before it, so two users may share a slot; that is harmless (a
 * slot may hold many users), and the name stays unambiguous because the kind comes first and
 * the only variable part after the tag is a message id (node-made UUIDs, no `}`). The
 * idempotency key is `idem:<n>:{u:<from>}<clientMsgId>` and a conversation's keys
 * `<kind>:<n>:{u:<owner>}<other>`, n = length of the tagged id, for the same reason as in
 * standalone mode. The prefix must not contain `{` or `}` (checked at start).
 *
 * Groups (groups.ts, cluster-groups.ts): a group's keys are in its own slot, `{g:<groupId>}`,
 * with the group's copy of each entry's text (`msg:{g:<groupId>}<id>`); the members' side of an
 * entry is in each member's slot: inbox keys, the member's text copy, `groups:{u:<member>}`
 * (its groups) and `group-cursor:{u:<member>}` (per group, the last seq in its inbox).
 *
 * Message texts are kept once per user, in the user's slot (`msg:{u:<userId>}<id>`): the
 * owner's copy also serves the conversation's reads (history, mark-read). A script reads texts
 * by id it found in an index of its own slot; those keys cannot be declared in KEYS ahead (the
 * ids are only known inside), but they are in the slot of the declared index by construction
 * (the same tag), which is what Redis Cluster checks. Two copies are the price of one slot per
 * read: a cluster stores each text twice (about 2× the text bytes of standalone mode).
 *
 * Standalone mode keeps the names of the first table (no tags), so an existing deployment
 * keeps its data across the upgrade, and keeps one text per message.
 */
import { conversationKey } from "@mrezhen/engine";

/**
 * Cluster mode: the user in whose slot a conversation's keys are, the first of the two in
 * conversationKey's order (so either user finds it).
 */
export function conversationOwner(userA: string, userB: string): string {
  return userA < userB ? userA : userB;
}

export class Keys {
  readonly presenceOnline: string;
  readonly presenceCount: string;
  readonly presenceVersion: string;
  readonly nodes: string;
  readonly broadcastChannel: string;
  /** This node's presence hash and liveness key. */
  readonly presenceThisNode: string;
  /**
   * This node's channel, and the head of every node's: a group's entry reaches each node that
   * holds members in one PUBLISH (groups.ts), not one per member.
   */
  readonly thisNodeChannel: string;
  readonly nodeChannelHead: string;
  readonly aliveThisNode: string;
  /** `<p>user:`; a user channel is this plus the user id (plus the tag in cluster mode). */
  readonly userChannelHead: string;
  /** Key head of message texts in standalone mode (cluster mode: textHeadOf*). */
  readonly messageHead: string;
  /** `<p>receipts:`, for the acknowledge script (the receipts key of a sender read from a body). */
  readonly receiptsHead: string;
  readonly presenceNodeHead: string;
  readonly aliveHead: string;
  /**
   * Standalone Redis: the set of groups whose chunked fan-out queue holds entries (groups.ts),
   * which every node's heartbeat helps finish: what a node that died mid fan-out left.
   */
  readonly groupFanOutPending: string;

  constructor(
    readonly prefix: string,
    nodeId: string,
    /** Redis Cluster: hash-tagged names (see the table above). */
    readonly cluster = false,
  ) {
    // Every presence key in one slot: `{p}` right after the prefix (nothing in cluster mode).
    const p = cluster ? `${prefix}{p}` : prefix;
    this.presenceOnline = `${p}presence:online`;
    this.presenceCount = `${p}presence:count`;
    this.presenceVersion = `${p}presence:version`;
    this.nodes = `${p}nodes`;
    this.broadcastChannel = `${p}broadcast`;
    this.messageHead = `${prefix}msg:`;
    this.receiptsHead = `${prefix}receipts:`;
    this.presenceNodeHead = `${p}presence:node:`;
    this.aliveHead = `${p}node-alive:`;
    this.groupFanOutPending = `${prefix}group-fanout-pending`;
    this.presenceThisNode = this.presenceNode(nodeId);
    this.aliveThisNode = this.alive(nodeId);
    this.userChannelHead = `${prefix}user:`;
    this.nodeChannelHead = `${p}node:`;
    this.thisNodeChannel = this.nodeChannelHead + nodeId;
  }

  /** `<p><kind>:<userId>`, or `<p><kind>:{u:<userId>}` in cluster mode. */
  private user(kind: string, userId: string): string {
    return this.cluster ? `${this.prefix}${kind}:{u:${userId}}` : `${this.prefix}${kind}:${userId}`;
  }

  /** `<p><kind>:<conversation>` (in cluster mode the conversation part carries the owner's tag). */
  private conv(kind: string, conversation: string): string {
    return `${this.prefix}${kind}:${conversation}`;
  }

  /** The text of a message (standalone mode: the only copy). */
  message(messageId: string): string {
    return this.messageHead + messageId;
  }

  /** Head of the texts a user's scripts read (standalone: the one copy; cluster: the user's). */
  textHeadOfUser(userId: string): string {
    return this.cluster ? `${this.prefix}msg:{u:${userId}}` : this.messageHead;
  }

  /** Head of the texts a conversation's scripts read (cluster mode: the owner's copies). */
  textHeadOfConversation(conversation: string): string {
    if (!this.cluster) return this.messageHead;
    // `<n>:{u:<owner>}<other>` (see conversationOf).
    const colon = conversation.indexOf(":");
    const length = Number(conversation.slice(0, colon));
    return this.textHeadOfUser(conversation.slice(colon + 4, colon + 4 + length));
  }

  /**
   * The conversation part of the conversation keys: one per unordered pair of users. In cluster
   * mode `<n>:{u:<owner>}<other>`: the keys go to the owner's slot (see the table above).
   */
  conversationOf(userA: string, userB: string): string {
    if (!this.cluster) return conversationKey(userA, userB);
    const owner = conversationOwner(userA, userB);
    const other = owner === userA ? userB : userA;
    return `${owner.length}:{u:${owner}}${other}`;
  }

  conversationSeq(conversation: string): string {
    return this.conv("conv-seq", conversation);
  }

  conversationLog(conversation: string): string {
    return this.conv("conv-log", conversation);
  }

  /** Cluster mode: DMs of the conversation not yet confirmed done on both users' sides. */
  pending(conversation: string): string {
    return this.conv("pending", conversation);
  }

  /** Cluster mode: user → read watermark in the conversation (mark-read runs in its slot). */
  readMarks(conversation: string): string {
    return this.conv("read-marks", conversation);
  }

  /** Cluster mode: the recipient step of a DM is done (its result), keyed by the message. */
  doneIn(userId: string, messageId: string): string {
    return `${this.prefix}done-in:{u:${userId}}${messageId}`;
  }

  /** Cluster mode: the sender step of a DM is done (its result), keyed by the message. */
  doneOut(userId: string, messageId: string): string {
    return `${this.prefix}done-out:{u:${userId}}${messageId}`;
  }

  inboxPosition(userId: string): string {
    return this.user("inbox-pos", userId);
  }

  inboxLog(userId: string): string {
    return this.user("inbox-log", userId);
  }

  queue(userId: string): string {
    return this.user("queue", userId);
  }

  /** The length prefix makes (from, clientMsgId) unambiguous for any ids (as the memory engine). */
  idempotency(from: string, clientMsgId: string): string {
    return this.cluster
      ? `${this.prefix}idem:${from.length}:{u:${from}}${clientMsgId}`
      : `${this.prefix}idem:${from.length}:${from}${clientMsgId}`;
  }

  conversations(userId: string): string {
    return this.user("convs", userId);
  }

  conversationLast(userId: string): string {
    return this.user("conv-last", userId);
  }

  unread(userId: string): string {
    return this.user("unread", userId);
  }

  acked(userId: string): string {
    return this.user("acked", userId);
  }

  delivered(userId: string): string {
    return this.user("delivered", userId);
  }

  read(userId: string): string {
    return this.user("read", userId);
  }

  receipts(userId: string): string {
    return this.user("receipts", userId);
  }

  presenceNode(nodeId: string): string {
    return this.presenceNodeHead + nodeId;
  }

  alive(nodeId: string): string {
    return this.aliveHead + nodeId;
  }

  /** A list (earlier versions kept a sorted set under `rate:`, left to expire by itself). */
  rate(key: string): string {
    return this.user("rate-log", key);
  }

  quota(userId: string): string {
    return this.user("quota", userId);
  }

  /**
   * A group's keys, `<p><kind>:{g:<groupId>}`, tagged in both modes (groups.ts): `group` (hash:
   * name, createdBy, createdAt, seq, messages), `group-members` (hash: member → seq of its join),
   * `group-former` (hash: former member → seq of its removal), `group-log` (list of
   * `<seq>|<message id>`, as conv-log), `group-unread` and `group-reads` (hash: member → unread
   * base, see UNREAD_COUNTS in groups.ts; read mark); standalone Redis, a large group's chunked
   * fan-out (groups.ts): `group-fanout` (list of the seqs not yet in every recipient's inbox),
   * `group-fanout-to:{g:<groupId>}<seq>` (list: the entry's recipients not written yet) and
   * `group-fanout-entry:{g:<groupId>}<seq>` (hash: id, from, exclude, idem, position, any; kept
   * 10 minutes once done). A group id may contain `}`: the tag is then only a prefix of it, which
   * only puts two groups in one slot; the kind before the tag keeps names unambiguous.
   */
  group(kind: string, groupId: string): string {
    return `${this.prefix}${kind}:{g:${groupId}}`;
  }

  /**
   * Head of a group's texts: in cluster mode the group's own copies, `msg:{g:<groupId>}<id>`, in
   * its slot (each member keeps another in its own, textHeadOfUser); standalone, the one copy.
   */
  textHeadOfGroup(groupId: string): string {
    return this.cluster ? `${this.prefix}msg:{g:${groupId}}` : this.messageHead;
  }

  /**
   * Cluster mode: hash of group id → the last seq of that group in the user's inbox (the
   * member steps' cursor, cluster-scripts.ts GROUP_MEMBER_STEP). Kept after the user leaves
   * (a late step of an earlier entry must still find it), like the other counters: no TTL.
   */
  groupCursor(userId: string): string {
    return this.user("group-cursor", userId);
  }

  /** The idempotency record of (sender, clientMsgId) in a group, in the group's slot. */
  groupIdempotency(groupId: string, from: string, clientMsgId: string): string {
    return `${this.group("group-idem", groupId)}${from.length}:${from}${clientMsgId}`;
  }

  /** Hash: group id → 1, the groups the user is a member of (`groups:` + user id). */
  userGroups(userId: string): string {
    return this.user("groups", userId);
  }

  userChannel(userId: string): string {
    return this.cluster ? `${this.userChannelHead}{u:${userId}}` : this.userChannelHead + userId;
  }

  /** The user of a user channel, or undefined for any other channel. */
  userOfChannel(channel: string): string | undefined {
    if (!channel.startsWith(this.userChannelHead)) return undefined;
    if (!this.cluster) return channel.slice(this.userChannelHead.length);
    const open = this.userChannelHead.length;
    if (!channel.startsWith("{u:", open) || !channel.endsWith("}")) return undefined;
    return channel.slice(open + 3, -1);
  }
}
