import { Buffer } from "node:buffer";
import { encodeMessage, receiptFrame } from "@mrezhen/protocol";
import {
  type AppendInput,
  type AppendResult,
  type ConversationSummary,
  DAY_MS,
  type HistoryPage,
  IDEMPOTENCY_TTL_MS,
  type InboxPage,
  type MessageStore,
  type QueuedMessage,
  type QuotaOptions,
  type RateRefusal,
  type RetentionOptions,
} from "../ports.js";
import type { MemoryBroker } from "./broker.js";
import { PackedLog } from "./packed-log.js";
import type { MemoryPresenceStore } from "./presence.js";
import type { MemoryRateLimiter } from "./rate-limiter.js";

/**
 * A conversation and its messages. Each message is stored once, here, outside the V8 heap (see
 * PackedLog); inboxes and queues refer to it by (conversation number, seq).
 */
export interface Conversation {
  /** Its index in MemoryMessageStore.conversationsByNumber. */
  readonly number: number;
  /**
   * Set when this is a group's log (groups.ts): inbox entries refer to it like to a
   * conversation, and it has no "first" and "second" user.
   */
  readonly groupId?: string;
  /** The two users, in conversationKey order. */
  readonly first: string;
  readonly second: string;
  /** Last seq handed out (messages may have been trimmed since). */
  lastSeq: number;
  /**
   * Kept messages in seq order, with their id and stored JSON. Seqs are contiguous, so a row's
   * seq follows from its index (lastSeq - length + 1 is the first kept).
   */
  readonly messages: PackedLog;
}

/** Columns of Conversation.messages. */
const STORED_AT = 0;
/** 1 when the message is from the conversation's second user. */
const FROM_SECOND = 1;

interface Inbox {
  newest: number;
  /**
   * Kept entries in position order. Positions are contiguous, so an entry's position follows
   * from its index (see firstPosition).
   */
  readonly entries: PackedLog;
  /** Highest position any device acked. */
  acked: number;
}

/** Columns of Inbox.entries. */
const ENTRY_AT = 0;
const ENTRY_CONVERSATION = 1;
const ENTRY_SEQ = 2;

/** Per user, per other party: watermarks and counters of their conversation. */
interface Peer {
  readonly other: string;
  /** Highest seq of theirs this user's devices acked (the delivered receipt they got). */
  delivered: number;
  /** Highest seq this user marked read. */
  read: number;
  unread: number;
  /**
   * Neighbours in the user's recency list (Peers): the conversation with the next more recent,
   * and the next less recent, last message. Both undefined while not linked (no message yet, or
   * unlinked once its messages expired).
   */
  newer: Peer | undefined;
  older: Peer | undefined;
}

/**
 * A user's peers, and the ones with messages as a list by their conversation's last message,
 * most recent first: an append moves one peer to the front in O(1), and a page of conversations
 * reads `limit` peers from the front instead of sorting them all (which took 15–90 ms a call
 * at 40,000 peers, blocking the event loop).
 */
interface Peers {
  readonly byOther: Map<string, Peer>;
  newest: Peer | undefined;
}

/** What a user spent of its quotas on one UTC day. */
interface QuotaUse {
  day: number;
  conversations: number;
  bytes: number;
}

/**
 * Messages of a single node, in process memory: the same model as the Redis engine (history,
 * per-user inboxes, offline queues, watermarks), with the same retention. Everything here is gone
 * when the process exits: use the Redis engine where acked messages must outlive a restart.
 *
 * An inbox entry and a queued message refer to the conversation's copy. That copy outlives them:
 * an inbox keeps its user's newest maxEntries entries, so fewer than maxEntries newer messages of
 * any one conversation, which keeps its own newest maxEntries; a queue holds inbox positions; and
 * all of them expire at the same age.
 */
export class MemoryMessageStore implements MessageStore {
  private readonly conversationsByKey = new Map<string, Conversation>();
  private readonly conversationsByNumber: Conversation[] = [];
  private readonly inboxes = new Map<string, Inbox>();
  /** Offline queues: inbox positions of the user, ascending. */
  private readonly queues = new Map<string, number[]>();
  private readonly peers = new Map<string, Peers>();
  private readonly quotaUse = new Map<string, QuotaUse>();
  /** Latest receipt frames addressed to a user, by "<kind>|<from>". */
  private readonly receiptsFor = new Map<string, Map<string, string>>();
  private readonly idempotency = new Map<string, { result: AppendResult; expiresAt: number }>();

  constructor(
    private readonly broker: MemoryBroker,
    private readonly presence: MemoryPresenceStore,
    private readonly rateLimiter: MemoryRateLimiter,
    private readonly retention: RetentionOptions,
    private readonly quotas: QuotaOptions,
    private readonly now: () => number,
  ) {}

  async append(input: AppendInput): Promise<AppendResult> {
    return this.duplicateOf(input) ?? this.store(input, this.conversation(input.from, input.to));
  }

  /**
   * Quotas, then the rate limit, then the store, in one synchronous step. The quotas are only
   * read until the rate limiter allowed the message, so a refusal by either counts nothing.
   * Cost over append: one map read and one byteLength (a scan of the text) per message.
   */
  async appendIfAllowed(input: AppendInput): Promise<AppendResult | RateRefusal> {
    return this.checkAndStore(input);
  }

  appendIfAllowedNow(input: AppendInput): AppendResult | RateRefusal {
    return this.checkAndStore(input);
  }

  private checkAndStore(input: AppendInput): AppendResult | RateRefusal {
    const duplicate = this.duplicateOf(input);
    if (duplicate !== undefined) return duplicate;
    const existing = this.conversationsByKey.get(conversationKey(input.from, input.to));
    // A pair with no seq yet never exchanged a message: this one starts a conversation.
    const starts = existing === undefined || existing.lastSeq === 0;
    const json = encodeStored(input, (existing?.lastSeq ?? 0) + 1);
    const bytes = Buffer.byteLength(json);
    const now = this.now();
    const day = Math.floor(now / DAY_MS);
    let use = this.quotaUse.get(input.from);
    if (use !== undefined && use.day !== day) use = undefined;
    const untilTomorrow = (day + 1) * DAY_MS - now;
    if (starts && (use?.conversations ?? 0) + 1 > this.quotas.newConversationsPerDay)
      return { refused: true, retryAfterMs: untilTomorrow, limit: "new_conversations_per_day" };
    if ((use?.bytes ?? 0) + bytes > this.quotas.bytesPerDay)
      return { refused: true, retryAfterMs: untilTomorrow, limit: "bytes_per_day" };
    const decision = this.rateLimiter.decide(input.from);
    if (!decision.allowed)
      return { refused: true, retryAfterMs: decision.retryAfterMs, limit: "rate" };
    if (use === undefined) {
      use = { day, conversations: 0, bytes: 0 };
      this.quotaUse.set(input.from, use);
    }
    if (starts) use.conversations++;
    use.bytes += bytes;
    return this.store(input, existing ?? this.conversation(input.from, input.to), json);
  }

  /** The original's result when `input` retries a clientMsgId already stored. */
  private duplicateOf(input: AppendInput): AppendResult | undefined {
    if (input.clientMsgId === undefined) return undefined;
    const earlier = this.idempotency.get(idempotencyKey(input.from, input.clientMsgId));
    if (earlier === undefined || earlier.expiresAt <= this.now()) return undefined;
    return { ...earlier.result, duplicate: true };
  }

  /** Stores `input` in `conversation`, as `json` when already encoded (with the next seq). */
  private store(input: AppendInput, conversation: Conversation, encoded?: string): AppendResult {
    const now = this.now();
    const seq = ++conversation.lastSeq;
    const json = encoded ?? encodeStored(input, seq);
    const row = conversation.messages.pushTexts(input.id, json);
    conversation.messages.set(row, STORED_AT, now);
    conversation.messages.set(row, FROM_SECOND, input.from === conversation.first ? 0 : 1);
    const senderPosition = this.addToInbox(input.from, conversation, seq, now);
    const recipientPosition = this.addToInbox(input.to, conversation, seq, now);
    this.touch(input.from, input.to);
    this.touch(input.to, input.from).unread++;

    let status: AppendResult["status"] = "delivered";
    if (!this.presence.isOnline(input.to)) {
      status = "queued";
      this.enqueue(input.to, recipientPosition);
    } else {
      this.broker.publish(input.to, {
        kind: "message",
        messageId: input.id,
        messageJson: json,
        position: recipientPosition,
      });
    }
    if (this.presence.connectionCount(input.from) > 1) {
      this.broker.publish(input.from, {
        kind: "message",
        messageId: input.id,
        messageJson: json,
        position: senderPosition,
        excludeConnId: input.senderConnId,
      });
    }
    const result: AppendResult = {
      messageId: input.id,
      timestamp: input.timestamp,
      duplicate: false,
      seq,
      status,
      senderPosition,
      recipientPosition,
    };
    if (input.clientMsgId !== undefined) {
      this.idempotency.set(idempotencyKey(input.from, input.clientMsgId), {
        result,
        expiresAt: now + IDEMPOTENCY_TTL_MS,
      });
    }
    return result;
  }

  async history(
    userA: string,
    userB: string,
    limit: number,
    before?: number,
  ): Promise<HistoryPage> {
    const conversation = this.conversationsByKey.get(conversationKey(userA, userB));
    if (conversation === undefined) return { messages: [], hasMore: false };
    const { messages } = conversation;
    const firstSeq = conversation.lastSeq - messages.length + 1;
    const end =
      before === undefined
        ? messages.length
        : Math.max(0, Math.min(messages.length, before - firstSeq));
    const start = Math.max(0, end - limit);
    const texts: string[] = [];
    for (let index = start; index < end; index++) texts.push(messages.text(index));
    return { messages: texts, hasMore: start > 0 };
  }

  async readInbox(
    userId: string,
    after: number,
    limit: number,
    maxBytes = Number.POSITIVE_INFINITY,
  ): Promise<InboxPage> {
    const inbox = this.inboxes.get(userId);
    if (inbox === undefined) return { entries: [], oldest: 1, newest: 0 };
    const entries: QueuedMessage[] = [];
    const first = firstPosition(inbox);
    let bytes = 0;
    for (
      let index = Math.max(0, after - first + 1);
      index < inbox.entries.length && entries.length < limit && bytes < maxBytes;
      index++
    ) {
      const entry = this.queuedMessage(inbox, first + index);
      if (entry === undefined) continue;
      entries.push(entry);
      bytes += entry.messageJson.length;
    }
    return { entries, oldest: first, newest: inbox.newest };
  }

  async acknowledge(userId: string, upTo: number): Promise<void> {
    const inbox = this.inboxes.get(userId);
    if (inbox === undefined || upTo <= inbox.acked) return;
    const covered = new Map<string, number>();
    const first = firstPosition(inbox);
    const end = Math.min(upTo, inbox.newest) - first + 1;
    for (let index = Math.max(0, inbox.acked - first + 1); index < end; index++) {
      const conversation = this.conversationOf(inbox, index);
      // Groups have no delivered receipts (see GroupStore.markRead for their read receipts).
      if (conversation.groupId !== undefined) continue;
      const seq = inbox.entries.get(index, ENTRY_SEQ);
      const from = this.sender(conversation, seq);
      if (from === undefined || from === userId) continue;
      covered.set(from, Math.max(covered.get(from) ?? 0, seq));
    }
    inbox.acked = Math.min(upTo, inbox.newest);
    for (const [other, seq] of covered) {
      const peer = this.peer(userId, other);
      if (seq <= peer.delivered) continue;
      peer.delivered = seq;
      this.sendReceipt(other, "delivered", userId, seq);
    }
  }

  async markRead(userId: string, other: string, upTo: number): Promise<void> {
    const conversation = this.conversationsByKey.get(conversationKey(userId, other));
    if (conversation === undefined) return;
    const readUpTo = Math.min(upTo, conversation.lastSeq);
    const peer = this.peer(userId, other);
    if (readUpTo <= peer.read) return;
    peer.read = readUpTo;
    const firstSeq = conversation.lastSeq - conversation.messages.length + 1;
    let unread = 0;
    for (let seq = conversation.lastSeq; seq > readUpTo && seq >= firstSeq; seq--)
      if (this.sender(conversation, seq) === other) unread++;
    peer.unread = unread;
    this.sendReceipt(other, "read", userId, readUpTo);
  }

  async receipts(userId: string): Promise<string[]> {
    return [...(this.receiptsFor.get(userId)?.values() ?? [])];
  }

  /**
   * O(limit), plus O(1) for each conversation whose messages all expired since the last call:
   * it is unlinked from the recency list when met (a new message links it again).
   */
  async conversations(userId: string, limit: number): Promise<ConversationSummary[]> {
    const direct = this.directConversations(userId, limit);
    const groups = this.groups?.summaries(userId, limit);
    return groups === undefined || groups.length === 0
      ? direct
      : mergeByRecency(direct, groups, limit);
  }

  /** The groups' side of conversations() (set by the group store of the same engine). */
  groups: { summaries(userId: string, limit: number): ConversationSummary[] } | undefined;

  private directConversations(userId: string, limit: number): ConversationSummary[] {
    const summaries: ConversationSummary[] = [];
    const peers = this.peers.get(userId);
    if (peers === undefined) return summaries;
    let peer = peers.newest;
    while (peer !== undefined && summaries.length < limit) {
      const older: Peer | undefined = peer.older;
      const messages = this.conversationsByKey.get(conversationKey(userId, peer.other))?.messages;
      if (messages === undefined || messages.length === 0) unlink(peers, peer);
      else
        summaries.push({
          with: peer.other,
          lastMessageJson: messages.text(messages.length - 1),
          unread: peer.unread,
        });
      peer = older;
    }
    return summaries;
  }

  async contacts(userId: string, limit: number): Promise<string[]> {
    const peers = this.peers.get(userId);
    const contacts: string[] = [];
    // The recency list, newest first: O(limit), however many peers the user has.
    for (let peer = peers?.newest; peer !== undefined && contacts.length < limit; peer = peer.older)
      contacts.push(peer.other);
    return contacts;
  }

  async readQueued(
    userId: string,
    after: number,
    limit: number,
    maxBytes = Number.POSITIVE_INFINITY,
  ): Promise<QueuedMessage[]> {
    const queue = this.queues.get(userId);
    const inbox = this.inboxes.get(userId);
    if (queue === undefined || inbox === undefined) return [];
    const page: QueuedMessage[] = [];
    let bytes = 0;
    for (
      let index = firstAbove(queue, after);
      index < queue.length && page.length < limit && bytes < maxBytes;
      index++
    ) {
      const entry = this.queuedMessage(inbox, queue[index] as number);
      if (entry === undefined) continue;
      page.push(entry);
      bytes += entry.messageJson.length;
    }
    return page;
  }

  async removeQueued(userId: string, upTo: number): Promise<void> {
    const queue = this.queues.get(userId);
    if (queue === undefined) return;
    queue.splice(0, firstAbove(queue, upTo));
    if (queue.length === 0) this.queues.delete(userId);
  }

  async requeueIfOffline(userId: string, message: QueuedMessage): Promise<boolean> {
    if (this.presence.isOnline(userId)) return false;
    this.enqueue(userId, message.position);
    return true;
  }

  /** Drops what retention no longer keeps. Every index is in time order, so only heads are read. */
  sweep(): void {
    const horizon = this.now() - this.retention.messageTtlMs;
    for (const conversation of this.conversationsByKey.values())
      conversation.messages.dropWhile((log) => log.get(0, STORED_AT) <= horizon);
    for (const inbox of this.inboxes.values())
      inbox.entries.dropWhile((log) => log.get(0, ENTRY_AT) <= horizon);
    for (const [userId, queue] of this.queues) {
      // A queue holds inbox positions in order: those the inbox dropped are at its head.
      const inbox = this.inboxes.get(userId);
      const kept = inbox === undefined ? Number.POSITIVE_INFINITY : firstPosition(inbox);
      let count = 0;
      while (count < queue.length && (queue[count] as number) < kept) count++;
      queue.splice(0, count);
      if (queue.length === 0) this.queues.delete(userId);
    }
    const now = this.now();
    for (const [key, entry] of this.idempotency)
      if (entry.expiresAt <= now) this.idempotency.delete(key);
    const today = Math.floor(now / DAY_MS);
    for (const [userId, use] of this.quotaUse) if (use.day !== today) this.quotaUse.delete(userId);
  }

  /** The message at `position` of `inbox`, or undefined when retention dropped it. */
  private queuedMessage(inbox: Inbox, position: number): QueuedMessage | undefined {
    const index = position - firstPosition(inbox);
    if (index < 0 || index >= inbox.entries.length) return undefined;
    const { messages, lastSeq } = this.conversationOf(inbox, index);
    const conversation = this.conversationOf(inbox, index);
    const row = inbox.entries.get(index, ENTRY_SEQ) - (lastSeq - messages.length + 1);
    if (row < 0) return undefined;
    const entry = { messageId: messages.id(row), messageJson: messages.text(row), position };
    return conversation.groupId === undefined ? entry : { ...entry, groupId: conversation.groupId };
  }

  private conversationOf(inbox: Inbox, index: number): Conversation {
    const number = inbox.entries.get(index, ENTRY_CONVERSATION);
    return this.conversationsByNumber[number] as Conversation;
  }

  /** Who sent message `seq` of `conversation`, or undefined when retention dropped it. */
  private sender(conversation: Conversation, seq: number): string | undefined {
    const { messages, lastSeq } = conversation;
    const row = seq - (lastSeq - messages.length + 1);
    if (row < 0) return undefined;
    return messages.get(row, FROM_SECOND) === 1 ? conversation.second : conversation.first;
  }

  private sendReceipt(to: string, kind: "delivered" | "read", from: string, upTo: number): void {
    this.storeReceipt(to, `${kind}|${from}`, receiptFrame(kind, from, upTo));
  }

  /** Keeps `frame` as the latest receipt of its `key` for `to`'s sync, and publishes it. */
  storeReceipt(to: string, key: string, frame: string): void {
    let latest = this.receiptsFor.get(to);
    if (latest === undefined) {
      latest = new Map();
      this.receiptsFor.set(to, latest);
    }
    latest.set(key, frame);
    this.broker.publish(to, { kind: "frame", frame });
  }

  private conversation(userA: string, userB: string): Conversation {
    const key = conversationKey(userA, userB);
    let conversation = this.conversationsByKey.get(key);
    if (conversation === undefined) {
      const [first, second] = userA < userB ? [userA, userB] : [userB, userA];
      conversation = {
        number: this.conversationsByNumber.length,
        first,
        second,
        lastSeq: 0,
        messages: new PackedLog(2, true, this.retention.maxEntries),
      };
      this.conversationsByKey.set(key, conversation);
      this.conversationsByNumber.push(conversation);
    }
    return conversation;
  }

  /** A new log for group `groupId`, numbered among the conversations (for inbox entries). */
  groupLog(groupId: string): Conversation {
    const log: Conversation = {
      number: this.conversationsByNumber.length,
      groupId,
      first: groupId,
      second: groupId,
      lastSeq: 0,
      messages: new PackedLog(3, true, this.retention.maxEntries),
    };
    this.conversationsByNumber.push(log);
    return log;
  }

  addToInbox(userId: string, conversation: Conversation, seq: number, now: number): number {
    let inbox = this.inboxes.get(userId);
    if (inbox === undefined) {
      inbox = { newest: 0, entries: new PackedLog(3, false, this.retention.maxEntries), acked: 0 };
      this.inboxes.set(userId, inbox);
    }
    const position = ++inbox.newest;
    const index = inbox.entries.push();
    inbox.entries.set(index, ENTRY_AT, now);
    inbox.entries.set(index, ENTRY_CONVERSATION, conversation.number);
    inbox.entries.set(index, ENTRY_SEQ, seq);
    return position;
  }

  private peer(userId: string, other: string): Peer {
    return this.peerIn(this.peersOf(userId), other);
  }

  /** The peer, moved to the front of the user's recency list (a message was just appended). */
  private touch(userId: string, other: string): Peer {
    const peers = this.peersOf(userId);
    const peer = this.peerIn(peers, other);
    if (peers.newest === peer) return peer;
    unlink(peers, peer);
    peer.older = peers.newest;
    if (peers.newest !== undefined) peers.newest.newer = peer;
    peers.newest = peer;
    return peer;
  }

  private peersOf(userId: string): Peers {
    let peers = this.peers.get(userId);
    if (peers === undefined) {
      peers = { byOther: new Map(), newest: undefined };
      this.peers.set(userId, peers);
    }
    return peers;
  }

  private peerIn(peers: Peers, other: string): Peer {
    let peer = peers.byOther.get(other);
    if (peer === undefined) {
      peer = { other, delivered: 0, read: 0, unread: 0, newer: undefined, older: undefined };
      peers.byOther.set(other, peer);
    }
    return peer;
  }

  enqueue(userId: string, position: number): void {
    let queue = this.queues.get(userId);
    if (queue === undefined) {
      queue = [];
      this.queues.set(userId, queue);
    }
    // Requeued entries can arrive after newer ones: keep the queue in position order.
    let index = queue.length;
    while (index > 0 && (queue[index - 1] as number) > position) index--;
    queue.splice(index, 0, position);
    if (queue.length > this.retention.maxEntries)
      queue.splice(0, queue.length - this.retention.maxEntries);
  }
}

/**
 * Direct and group conversations, most recent first, at most `limit`: both lists are newest
 * first, so a merge by their last message's timestamp (ISO 8601 UTC sorts as text).
 */
export function mergeByRecency(
  direct: readonly ConversationSummary[],
  groups: readonly ConversationSummary[],
  limit: number,
): ConversationSummary[] {
  const merged: ConversationSummary[] = [];
  let d = 0;
  let g = 0;
  while (merged.length < limit && (d < direct.length || g < groups.length)) {
    const a = direct[d];
    const b = groups[g];
    if (b === undefined || (a !== undefined && timestampOf(a) >= timestampOf(b))) {
      merged.push(a as ConversationSummary);
      d++;
    } else {
      merged.push(b);
      g++;
    }
  }
  return merged;
}

/** The `timestamp` field of a stored message (every stored text has one). */
function timestampOf(summary: ConversationSummary): string {
  const json = summary.lastMessageJson;
  const at = json.indexOf('"timestamp":"');
  return at < 0 ? "" : json.slice(at + 13, at + 37);
}

/** The index of the first of `positions` (ascending) above `after`: a binary search. */
function firstAbove(positions: readonly number[], after: number): number {
  let low = 0;
  let high = positions.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if ((positions[middle] as number) <= after) low = middle + 1;
    else high = middle;
  }
  return low;
}

/** Takes `peer` out of its user's recency list (a no-op when it is not in it). */
function unlink(peers: Peers, peer: Peer): void {
  if (peer.newer !== undefined) peer.newer.older = peer.older;
  else if (peers.newest === peer) peers.newest = peer.older;
  if (peer.older !== undefined) peer.older.newer = peer.newer;
  peer.newer = undefined;
  peer.older = undefined;
}

/** The stored text of `input` as message `seq` of its conversation (protocol encodeMessage). */
function encodeStored(input: AppendInput, seq: number): string {
  return encodeMessage({
    id: input.id,
    from: input.from,
    to: input.to,
    content: input.content,
    timestamp: input.timestamp,
    seq,
    ...(input.clientMsgId === undefined ? {} : { clientMsgId: input.clientMsgId }),
  });
}

/** The position of an inbox's oldest kept entry (newest + 1 when none is kept). */
function firstPosition(inbox: Inbox): number {
  return inbox.newest - inbox.entries.length + 1;
}

/** One key per sender and clientMsgId; the length prefix makes it unambiguous. */
function idempotencyKey(from: string, clientMsgId: string): string {
  return `${from.length}:${from}${clientMsgId}`;
}

/** One key per unordered pair of users; the length prefix makes it unambiguous for any ids. */
export function conversationKey(userA: string, userB: string): string {
  const [first, second] = userA < userB ? [userA, userB] : [userB, userA];
  return `${first.length}:${first}${second}`;
}
