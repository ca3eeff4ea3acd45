/**
 * MessageStore on Redis. Round trips (each one EVALSHA, see scripts.ts, unless said otherwise):
 * - append: 1 (APPEND: idempotency check, seq, positions, text, history, inboxes, conversation
 *   lists, unread count, queue-or-publish, sender copy, idempotency record) — with or without a
 *   clientMsgId, and a retry answered from the idempotency record is 1 too;
 * - history: 1 (HISTORY: a page of the conversation + the texts, inside the script);
 * - readInbox: 1 (READ_INBOX); acknowledge: 1 (ACKNOWLEDGE); markRead: 1 (MARK_READ);
 * - receipts: 1 (HVALS); conversations: 1 (CONVERSATIONS); contacts: 1 (ZREVRANGE);
 * - readQueued: 1 (READ_QUEUED: a page of the queue, with the texts); removeQueued: 1
 *   (ZREMRANGEBYSCORE);
 * - requeueIfOffline: 1 (REQUEUE_IF_OFFLINE: check presence and add, atomically).
 *
 * - appendIfAllowed: 1 too (the same script, which also counts the sender's rate-limit window
 *   and daily quotas).
 *
 * A direct message therefore costs the node one round trip in all: appendIfAllowed
 * (test/round-trips.test.ts counts them with MONITOR).
 *
 * Retention (RetentionOptions): message texts expire (PX messageTtlMs); every index (history,
 * inbox, queue, conversation list) is capped at maxEntries newest entries, and the message
 * indexes expire with their newest text; reads skip entries whose text expired, and drop them
 * (texts expire oldest first, so at the head of an index). See keys.ts for the layout and what
 * is kept without a TTL.
 */
import {
  type AppendInput,
  type AppendResult,
  type ConversationSummary,
  type HistoryPage,
  IDEMPOTENCY_TTL_MS,
  type InboxPage,
  type MessageStore,
  mergeByRecency,
  type QueuedMessage,
  type QuotaOptions,
  type RateLimitOptions,
  type RateRefusal,
  type RefusedLimit,
  type RetentionOptions,
} from "@mrezhen/engine";
import { encodeMessageWithoutSeq, type ReceiptKind, receiptFrame } from "@mrezhen/protocol";
import type { Keys } from "./keys.js";
import {
  coalesceWrites,
  type RedisClient,
  runScript,
  type ScriptArgument,
  strings,
  toEngineError,
} from "./script-runner.js";
import {
  ACKNOWLEDGE,
  APPEND,
  APPEND_IDEMPOTENT,
  APPEND_IDEMPOTENT_LIMITED,
  APPEND_LIMITED,
  CONVERSATIONS,
  HISTORY,
  MARK_READ,
  READ_INBOX,
  READ_QUEUED,
  REQUEUE_IF_OFFLINE,
} from "./scripts.js";

/** Largest count sent to a script (limits are clamped to it; a Lua LIMIT takes any of these). */
const MAX_COUNT = 2_147_483_646;

export class RedisMessageStore implements MessageStore {
  constructor(
    protected readonly client: RedisClient,
    protected readonly keys: Keys,
    protected readonly retention: RetentionOptions,
    protected readonly rateLimit: RateLimitOptions,
    protected readonly quotas: QuotaOptions,
  ) {}

  async append(input: AppendInput): Promise<AppendResult> {
    const reply = await this.runAppend(input, false);
    return appendResult(reply, input);
  }

  async appendIfAllowed(input: AppendInput): Promise<AppendResult | RateRefusal> {
    const reply = await this.runAppend(input, true);
    if (Array.isArray(reply) && reply.length === 6) {
      const limit = REFUSED_LIMITS[reply[4] as number];
      const retryAfterMs = reply[5];
      if (limit === undefined || typeof retryAfterMs !== "number") unexpected("append", reply);
      return { refused: true, retryAfterMs, limit };
    }
    return appendResult(reply, input);
  }

  /**
   * One APPEND; when `limited`, behind the sender's rate limit (the same window as RateLimiter)
   * and daily quotas, counted in the same script.
   */
  private runAppend(input: AppendInput, limited: boolean): Promise<unknown> {
    const { keys } = this;
    const { clientMsgId } = input;
    const conversation = keys.conversationOf(input.from, input.to);
    // protocol encodeMessage without `,"seq":N}`, which the script appends once it knows N.
    const head = encodeMessageWithoutSeq({
      id: input.id,
      from: input.from,
      to: input.to,
      content: input.content,
      timestamp: input.timestamp,
      ...(clientMsgId === undefined ? {} : { clientMsgId }),
    }).slice(0, -1);
    const args: ScriptArgument[] = [
      keys.conversationSeq(conversation),
      keys.conversationLog(conversation),
      keys.message(input.id),
      keys.inboxPosition(input.from),
      keys.inboxPosition(input.to),
      keys.inboxLog(input.from),
      keys.inboxLog(input.to),
      keys.presenceCount,
      keys.queue(input.to),
      keys.conversations(input.from),
      keys.conversations(input.to),
      keys.conversationLast(input.from),
      keys.conversationLast(input.to),
      keys.unread(input.to),
    ];
    if (clientMsgId !== undefined) args.push(keys.idempotency(input.from, clientMsgId));
    if (limited) args.push(keys.rate(input.from), keys.quota(input.from));
    args.push(
      input.id,
      input.from,
      input.to,
      head,
      keys.userChannel(input.to),
      keys.userChannel(input.from),
      input.senderConnId,
      this.retention.messageTtlMs,
      this.retention.maxEntries,
    );
    if (clientMsgId !== undefined) args.push(IDEMPOTENCY_TTL_MS, input.timestamp);
    else if (limited) args.push("", "");
    if (limited) {
      args.push(
        this.rateLimit.limit,
        this.rateLimit.windowMs,
        this.quotas.newConversationsPerDay,
        this.quotas.bytesPerDay,
      );
    }
    const script =
      clientMsgId === undefined
        ? limited
          ? APPEND_LIMITED
          : APPEND
        : limited
          ? APPEND_IDEMPOTENT_LIMITED
          : APPEND_IDEMPOTENT;
    return runScript(this.client, script, args, true);
  }

  async history(
    userA: string,
    userB: string,
    limit: number,
    before?: number,
  ): Promise<HistoryPage> {
    // Seqs start at 1: nothing is below 1.
    if (before !== undefined && before <= 1) return { messages: [], hasMore: false };
    // The highest seq wanted: the last whole number below `before`.
    const highest =
      before === undefined || Number.isNaN(before) || before === Number.POSITIVE_INFINITY
        ? "+inf"
        : Math.min(Math.ceil(before) - 1, Number.MAX_SAFE_INTEGER);
    const conversation = this.keys.conversationOf(userA, userB);
    const reply = await runScript(this.client, HISTORY, [
      this.keys.conversationLog(conversation),
      count(limit),
      highest,
      this.keys.textHeadOfConversation(conversation),
    ]);
    if (!Array.isArray(reply) || (reply[0] !== 0 && reply[0] !== 1)) unexpected("history", reply);
    return { messages: strings(reply.slice(1), "history"), hasMore: reply[0] === 1 };
  }

  /**
   * A page of any log of `<seq>|<id>` entries (HISTORY): the newest `limit` below `before`, the
   * texts read under `textHead` (in the log's slot).
   */
  async logPage(
    logKey: string,
    limit: number,
    before: number,
    textHead: string,
  ): Promise<HistoryPage> {
    if (before <= 1) return { messages: [], hasMore: false };
    const highest =
      before === Number.POSITIVE_INFINITY
        ? "+inf"
        : Math.min(Math.ceil(before) - 1, Number.MAX_SAFE_INTEGER);
    const reply = await runScript(this.client, HISTORY, [logKey, count(limit), highest, textHead]);
    if (!Array.isArray(reply) || (reply[0] !== 0 && reply[0] !== 1)) unexpected("history", reply);
    return { messages: strings(reply.slice(1), "history"), hasMore: reply[0] === 1 };
  }

  async readInbox(
    userId: string,
    after: number,
    limit: number,
    maxBytes = Number.MAX_SAFE_INTEGER,
  ): Promise<InboxPage> {
    const reply = await runScript(this.client, READ_INBOX, [
      this.keys.inboxLog(userId),
      this.keys.inboxPosition(userId),
      positionsAfter(after),
      count(limit),
      this.keys.textHeadOfUser(userId),
      maxBytes,
    ]);
    const flat = strings(reply, "readInbox");
    return {
      entries: queuedMessages(flat, 2),
      oldest: Number(flat[0]),
      newest: Number(flat[1]),
    };
  }

  async acknowledge(userId: string, upTo: number): Promise<void> {
    const position = integer(upTo);
    if (position === undefined) return;
    const [frameHead, frameTail] = receiptFrameParts("delivered", userId);
    await runScript(this.client, ACKNOWLEDGE, [
      this.keys.inboxLog(userId),
      this.keys.inboxPosition(userId),
      this.keys.acked(userId),
      this.keys.delivered(userId),
      position,
      JSON.stringify(userId),
      userId,
      this.keys.messageHead,
      this.keys.receiptsHead,
      frameHead,
      frameTail,
      this.keys.userChannelHead,
    ]);
  }

  async markRead(userId: string, other: string, upTo: number): Promise<void> {
    const seq = integer(upTo);
    if (seq === undefined) return;
    const conversation = this.keys.conversationOf(userId, other);
    const [frameHead, frameTail] = receiptFrameParts("read", userId);
    await runScript(this.client, MARK_READ, [
      this.keys.conversationSeq(conversation),
      this.keys.conversationLog(conversation),
      this.keys.read(userId),
      this.keys.unread(userId),
      this.keys.receipts(other),
      other,
      seq,
      JSON.stringify(other),
      this.keys.messageHead,
      `read|${userId}`,
      this.keys.userChannel(other),
      frameHead,
      frameTail,
    ]);
  }

  async receipts(userId: string): Promise<string[]> {
    try {
      return strings(await this.client.hvals(this.keys.receipts(userId)), "hvals");
    } catch (error) {
      throw toEngineError(error);
    }
  }

  async conversations(userId: string, limit: number): Promise<ConversationSummary[]> {
    const wanted = count(limit);
    if (wanted === 0) return [];
    const reply = await runScript(this.client, CONVERSATIONS, [
      this.keys.conversations(userId),
      this.keys.conversationLast(userId),
      this.keys.unread(userId),
      wanted,
      this.keys.textHeadOfUser(userId),
    ]);
    const flat = strings(reply, "conversations");
    const summaries: ConversationSummary[] = [];
    for (let i = 0; i + 2 < flat.length; i += 3) {
      summaries.push({
        with: flat[i] as string,
        lastMessageJson: flat[i + 1] as string,
        unread: Number(flat[i + 2]),
      });
    }
    const groups = await this.groups?.summaries(userId, wanted);
    return groups === undefined || groups.length === 0
      ? summaries
      : mergeByRecency(summaries, groups, wanted);
  }

  /** The groups' side of conversations() (set by the group store of the same engine). */
  groups: { summaries(userId: string, limit: number): Promise<ConversationSummary[]> } | undefined;

  /**
   * One ZREVRANGE of the user's conversation list (members are the other users, scored by
   * recency): O(log n + limit), no message text read. Conversations whose last text expired may
   * still be listed (conversations() removes them lazily); they are contacts all the same.
   */
  async contacts(userId: string, limit: number): Promise<string[]> {
    const wanted = count(limit);
    if (wanted === 0) return [];
    try {
      coalesceWrites(this.client); // a connect's reads leave with the other commands of its turn
      return strings(
        await this.client.zrevrange(this.keys.conversations(userId), 0, wanted - 1),
        "zrevrange",
      );
    } catch (error) {
      throw toEngineError(error);
    }
  }

  async readQueued(
    userId: string,
    after: number,
    limit: number,
    maxBytes = Number.MAX_SAFE_INTEGER,
  ): Promise<QueuedMessage[]> {
    const wanted = count(limit);
    if (wanted === 0) return [];
    const reply = await runScript(this.client, READ_QUEUED, [
      this.keys.queue(userId),
      positionsAfter(after),
      wanted,
      maxBytes,
      this.keys.textHeadOfUser(userId),
    ]);
    return queuedMessages(strings(reply, "readQueued"), 0);
  }

  async removeQueued(userId: string, upTo: number): Promise<void> {
    try {
      await this.client.zremrangebyscore(this.keys.queue(userId), "-inf", positionsAfter(upTo));
    } catch (error) {
      throw toEngineError(error);
    }
  }

  /**
   * Queues the message by id, as append does: the queue refers to the stored text, so what is
   * queued is exactly what was stored (`message.messageJson` is not needed), and a message whose
   * text expired meanwhile is not queued.
   */
  async requeueIfOffline(userId: string, message: QueuedMessage): Promise<boolean> {
    const { messageId, position } = message;
    const reply = await runScript(this.client, REQUEUE_IF_OFFLINE, [
      this.keys.presenceCount,
      this.keys.queue(userId),
      this.keys.message(messageId),
      userId,
      position,
      messageId,
      this.retention.maxEntries,
      this.retention.messageTtlMs,
    ]);
    return reply === 1;
  }
}

/** The limit named by a refusing APPEND reply's fifth element. */
export const REFUSED_LIMITS: Readonly<Record<number, RefusedLimit>> = {
  2: "rate",
  3: "new_conversations_per_day",
  4: "bytes_per_day",
};

/** APPEND's reply: `{ seq, delivered, senderPos, recipientPos, 0 }` or, for a duplicate, `{ …, 1, id, timestamp }`. */
export function appendResult(reply: unknown, input: AppendInput): AppendResult {
  if (
    !Array.isArray(reply) ||
    !(reply.length === 5 || reply.length === 7) ||
    !reply.slice(0, 5).every((value) => typeof value === "number") ||
    !reply.slice(5).every((value) => typeof value === "string")
  ) {
    unexpected("append", reply);
  }
  const [seq, delivered, senderPosition, recipientPosition, duplicate, messageId, timestamp] =
    reply as [number, number, number, number, number, string?, string?];
  return {
    messageId: messageId ?? input.id,
    timestamp: timestamp ?? input.timestamp,
    duplicate: duplicate === 1,
    seq,
    status: delivered === 1 ? "delivered" : "queued",
    senderPosition,
    recipientPosition,
  };
}

/** The `id, position, text` triples of a READ_INBOX or READ_QUEUED reply, from index `from`. */
export function queuedMessages(flat: string[], from: number): QueuedMessage[] {
  const messages: QueuedMessage[] = [];
  for (let i = from; i + 2 < flat.length; i += 3) {
    const messageJson = flat[i + 2] as string;
    const entry = { messageId: flat[i] as string, position: Number(flat[i + 1]), messageJson };
    // A group's entry (groups.ts) shares the inbox: its text has `groupId` after the id (a
    // 36-character UUID, so at index 44), which a direct message's never has there.
    messages.push(
      messageJson.startsWith(',"groupId":', 44)
        ? { ...entry, groupId: (JSON.parse(messageJson) as { groupId: string }).groupId }
        : entry,
    );
  }
  return messages;
}

/** A limit as a script count: a whole number from 0 to MAX_COUNT. */
export function count(limit: number): number {
  if (!(limit > 0)) return 0;
  return Math.min(Math.floor(limit), MAX_COUNT);
}

/** `after` as the whole position that entries must be above (positions start at 1). */
export function positionsAfter(after: number): number {
  if (Number.isNaN(after) || after < 0) return 0;
  return Math.min(Math.floor(after), Number.MAX_SAFE_INTEGER);
}

/** A position or seq as a whole number for a script; undefined for NaN. */
export function integer(value: number): number | undefined {
  if (Number.isNaN(value)) return undefined;
  return Math.max(-Number.MAX_SAFE_INTEGER, Math.min(Math.floor(value), Number.MAX_SAFE_INTEGER));
}

const UP_TO_PROBE = 987_654_321;

/**
 * protocol receiptFrame split around its `upTo`: a script writes head + seq + tail, so the frame
 * is byte-identical to receiptFrame's whatever the user id holds (JSON escaping included).
 */
export function receiptFrameParts(kind: ReceiptKind, from: string): [string, string] {
  const frame = receiptFrame(kind, from, UP_TO_PROBE);
  const at = frame.lastIndexOf(String(UP_TO_PROBE));
  return [frame.slice(0, at), frame.slice(at + String(UP_TO_PROBE).length)];
}

export function unexpected(what: string, reply: unknown): never {
  throw new Error(`unexpected reply from the ${what} script: ${JSON.stringify(reply)}`);
}
