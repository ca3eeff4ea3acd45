import { encodeMessage, receiptFrame } from "@mrezhen/protocol";
import {
  type AppendInput,
  type AppendResult,
  type ConversationSummary,
  type HistoryPage,
  IDEMPOTENCY_TTL_MS,
  type InboxPage,
  type MessageStore,
  type QueuedMessage,
  type RetentionOptions,
} from "../ports.js";
import { BoundedLog } from "./bounded-log.js";
import type { MemoryBroker } from "./broker.js";
import type { MemoryPresenceStore } from "./presence.js";

/** A stored message and what indexes need of it. */
interface Stored {
  readonly id: string;
  readonly json: string;
  readonly from: string;
  readonly to: string;
  readonly seq: number;
  /** When it was stored (ms), for retention. */
  readonly at: number;
}

/** A queued message and when it was queued, for retention. */
type QueueEntry = QueuedMessage & { readonly at: number };

interface Conversation {
  /** Last seq handed out (entries may have been trimmed since). */
  lastSeq: number;
  /** Kept messages in seq order. */
  readonly messages: BoundedLog<Stored>;
}

interface Inbox {
  newest: number;
  /**
   * Kept messages in position order. Positions are contiguous, so an entry's position is
   * derived from its index (see positionAt) rather than stored: one object per message in all.
   */
  readonly entries: BoundedLog<Stored>;
  /** Highest position any device acked. */
  acked: number;
}

/** Per user, per other party: watermarks and counters of their conversation. */
interface Peer {
  /** Highest seq of theirs this user's devices acked (the delivered receipt they got). */
  delivered: number;
  /** Highest seq this user marked read. */
  read: number;
  unread: number;
  /** Order of the conversations of a user: the global append counter at its last message. */
  activity: number;
}

/**
 * Messages of a single node, in process memory: the same model as the Redis engine (history,
 * per-user inboxes, offline queues, watermarks), with the same retention. Everything here is gone
 * when the process exits: use the Redis engine where acked messages must outlive a restart.
 */
export class MemoryMessageStore implements MessageStore {
  private readonly conversationsByKey = new Map<string, Conversation>();
  private readonly inboxes = new Map<string, Inbox>();
  private readonly queues = new Map<string, QueueEntry[]>();
  private readonly peers = new Map<string, Map<string, Peer>>();
  /** Latest receipt frames addressed to a user, by "<kind>|<from>". */
  private readonly receiptsFor = new Map<string, Map<string, string>>();
  private readonly idempotency = new Map<string, { result: AppendResult; expiresAt: number }>();
  private activity = 0;

  constructor(
    private readonly broker: MemoryBroker,
    private readonly presence: MemoryPresenceStore,
    private readonly retention: RetentionOptions,
    private readonly now: () => number,
  ) {}

  async append(input: AppendInput): Promise<AppendResult> {
    const now = this.now();
    const idempotencyKey =
      input.clientMsgId === undefined
        ? undefined
        : `${input.from.length}:${input.from}${input.clientMsgId}`;
    if (idempotencyKey !== undefined) {
      const earlier = this.idempotency.get(idempotencyKey);
      if (earlier !== undefined && earlier.expiresAt > now)
        return { ...earlier.result, duplicate: true };
    }
    const conversation = this.conversation(input.from, input.to);
    const seq = ++conversation.lastSeq;
    const json = encodeMessage({
      id: input.id,
      from: input.from,
      to: input.to,
      content: input.content,
      timestamp: input.timestamp,
      seq,
      ...(input.clientMsgId === undefined ? {} : { clientMsgId: input.clientMsgId }),
    });
    const stored: Stored = { id: input.id, json, from: input.from, to: input.to, seq, at: now };
    conversation.messages.push(stored);
    const senderPosition = this.addToInbox(input.from, stored);
    const recipientPosition = this.addToInbox(input.to, stored);
    this.activity++;
    this.peer(input.from, input.to).activity = this.activity;
    const recipientPeer = this.peer(input.to, input.from);
    recipientPeer.activity = this.activity;
    recipientPeer.unread++;

    let status: AppendResult["status"] = "delivered";
    if (!this.presence.isOnline(input.to)) {
      status = "queued";
      this.enqueue(input.to, {
        messageId: input.id,
        messageJson: json,
        position: recipientPosition,
      });
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
    if (idempotencyKey !== undefined)
      this.idempotency.set(idempotencyKey, { result, expiresAt: now + IDEMPOTENCY_TTL_MS });
    return result;
  }

  async history(
    userA: string,
    userB: string,
    limit: number,
    before?: number,
  ): Promise<HistoryPage> {
    const messages = this.conversationsByKey.get(conversationKey(userA, userB))?.messages;
    if (messages === undefined) return { messages: [], hasMore: false };
    let end = messages.length;
    if (before !== undefined)
      while (end > 0 && (messages.at(end - 1) as Stored).seq >= before) end--;
    const start = Math.max(0, end - limit);
    return { messages: messages.slice(start, end).map((m) => m.json), hasMore: start > 0 };
  }

  async readInbox(userId: string, after: number, limit: number): Promise<InboxPage> {
    const inbox = this.inboxes.get(userId);
    if (inbox === undefined) return { entries: [], oldest: 1, newest: 0 };
    const entries: QueuedMessage[] = [];
    const first = firstPosition(inbox);
    for (
      let index = Math.max(0, after - first + 1);
      index < inbox.entries.length && entries.length < limit;
      index++
    ) {
      const message = inbox.entries.at(index) as Stored;
      entries.push({ messageId: message.id, messageJson: message.json, position: first + index });
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
      const message = inbox.entries.at(index) as Stored;
      if (message.from === userId) continue;
      covered.set(message.from, Math.max(covered.get(message.from) ?? 0, message.seq));
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
    let unread = 0;
    for (let i = conversation.messages.length - 1; i >= 0; i--) {
      const message = conversation.messages.at(i) as Stored;
      if (message.seq <= readUpTo) break;
      if (message.from === other) unread++;
    }
    peer.unread = unread;
    this.sendReceipt(other, "read", userId, readUpTo);
  }

  async receipts(userId: string): Promise<string[]> {
    return [...(this.receiptsFor.get(userId)?.values() ?? [])];
  }

  async conversations(userId: string, limit: number): Promise<ConversationSummary[]> {
    const peers = [...(this.peers.get(userId) ?? new Map<string, Peer>())].sort(
      (a, b) => b[1].activity - a[1].activity,
    );
    const summaries: ConversationSummary[] = [];
    for (const [other, peer] of peers) {
      if (summaries.length === limit) break;
      const last = this.conversationsByKey.get(conversationKey(userId, other))?.messages.last();
      if (last !== undefined)
        summaries.push({ with: other, lastMessageJson: last.json, unread: peer.unread });
    }
    return summaries;
  }

  async takeQueued(userId: string): Promise<QueuedMessage[]> {
    const queue = this.queues.get(userId);
    if (queue === undefined) return [];
    this.queues.delete(userId);
    return queue;
  }

  async requeueIfOffline(userId: string, message: QueuedMessage): Promise<boolean> {
    if (this.presence.isOnline(userId)) return false;
    this.enqueue(userId, message);
    return true;
  }

  /** Drops what retention no longer keeps. Every index is in time order, so only heads are read. */
  sweep(): void {
    const horizon = this.now() - this.retention.messageTtlMs;
    const expired = (item: { readonly at: number }) => item.at <= horizon;
    for (const conversation of this.conversationsByKey.values())
      conversation.messages.dropWhile(expired);
    for (const inbox of this.inboxes.values()) inbox.entries.dropWhile(expired);
    for (const [userId, queue] of this.queues) {
      // Position order is time order: expired entries are at the head.
      let count = 0;
      while (count < queue.length && expired(queue[count] as QueueEntry)) count++;
      queue.splice(0, count);
      if (queue.length === 0) this.queues.delete(userId);
    }
    const now = this.now();
    for (const [key, entry] of this.idempotency)
      if (entry.expiresAt <= now) this.idempotency.delete(key);
  }

  private sendReceipt(to: string, kind: "delivered" | "read", from: string, upTo: number): void {
    const frame = receiptFrame(kind, from, upTo);
    let latest = this.receiptsFor.get(to);
    if (latest === undefined) {
      latest = new Map();
      this.receiptsFor.set(to, latest);
    }
    latest.set(`${kind}|${from}`, frame);
    this.broker.publish(to, { kind: "frame", frame });
  }

  private conversation(userA: string, userB: string): Conversation {
    const key = conversationKey(userA, userB);
    let conversation = this.conversationsByKey.get(key);
    if (conversation === undefined) {
      conversation = { lastSeq: 0, messages: new BoundedLog(this.retention.maxEntries) };
      this.conversationsByKey.set(key, conversation);
    }
    return conversation;
  }

  private addToInbox(userId: string, message: Stored): number {
    let inbox = this.inboxes.get(userId);
    if (inbox === undefined) {
      inbox = { newest: 0, entries: new BoundedLog(this.retention.maxEntries), acked: 0 };
      this.inboxes.set(userId, inbox);
    }
    const position = ++inbox.newest;
    inbox.entries.push(message);
    return position;
  }

  private peer(userId: string, other: string): Peer {
    let peers = this.peers.get(userId);
    if (peers === undefined) {
      peers = new Map();
      this.peers.set(userId, peers);
    }
    let peer = peers.get(other);
    if (peer === undefined) {
      peer = { delivered: 0, read: 0, unread: 0, activity: 0 };
      peers.set(other, peer);
    }
    return peer;
  }

  private enqueue(userId: string, message: QueuedMessage): void {
    const entry: QueueEntry = { ...message, at: this.now() };
    let queue = this.queues.get(userId);
    if (queue === undefined) {
      queue = [];
      this.queues.set(userId, queue);
    }
    // Requeued entries can arrive after newer ones: keep the queue in position order.
    let index = queue.length;
    while (index > 0 && (queue[index - 1] as QueuedMessage).position > entry.position) index--;
    queue.splice(index, 0, entry);
    if (queue.length > this.retention.maxEntries)
      queue.splice(0, queue.length - this.retention.maxEntries);
  }
}

/** The position of an inbox's oldest kept entry (newest + 1 when none is kept). */
function firstPosition(inbox: Inbox): number {
  return inbox.newest - inbox.entries.length + 1;
}

/** One key per unordered pair of users; the length prefix makes it unambiguous for any ids. */
export function conversationKey(userA: string, userB: string): string {
  const [first, second] = userA < userB ? [userA, userB] : [userB, userA];
  return `${first.length}:${first}${second}`;
}
