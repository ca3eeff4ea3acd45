/**
 * MessageStore on Redis Cluster (REDIS_CLUSTER_NODES). What keeps to one user's or one
 * conversation's slot (history, readInbox, conversations, contacts, readQueued, removeQueued,
 * receipts) is the standalone store's, on the cluster's key layout (keys.ts). What spans slots
 * is split into steps here, each one script in one slot (cluster-scripts.ts):
 *
 * - append / appendIfAllowed: OWNER_STEP in the conversation owner's slot (with the sender's
 *   check when the sender is the owner), then RECIPIENT_STEP or SENDER_STEP for the other user:
 *   2 round trips; 3 when the sender is not the owner and has a check to pass (a clientMsgId, or
 *   limits: SEND_CHECK first, in the sender's slot). A retry answered from the idempotency
 *   record costs one more when the sender is the owner (the original's keys are named by its
 *   id). Every step is idempotent per message, so a retry (same clientMsgId, any node) runs them
 *   again and finishes whatever the first attempt left undone; the result is acked only after
 *   every step. DMs left half-done without a retry are repaired by the next send in their
 *   conversation (see cluster-scripts.ts).
 * - acknowledge: ACKNOWLEDGE_CLUSTER in the user's slot, then one RECEIPT per sender in the
 *   senders' slots (together): 2 round trips.
 * - markRead: MARK_READ_CONV in the conversation's slot, then SET_UNREAD in the reader's and
 *   RECEIPT in the other's (together): 2 round trips.
 * - requeueIfOffline: HGET of the presence count, then REQUEUE_CLUSTER: 2 round trips. Unlike
 *   standalone mode the check and the queueing are not atomic: a user who connects in between
 *   finds the message in the queue at the next connect rather than at this one.
 *
 * What a crash between steps can leave (no retry): a message in the history and the owner's
 * inbox but not yet in the other user's (repaired by the next send in the conversation); a delivered watermark raised without
 * its receipt (the receipt is lost; the next ack sends a later one); a read mark raised without
 * the unread count or the receipt updated (the next mark-read writes both).
 */
import {
  type AppendInput,
  type AppendResult,
  IDEMPOTENCY_TTL_MS,
  type QueuedMessage,
  type RateRefusal,
} from "@mrezhen/engine";
import { encodeMessageWithoutSeq } from "@mrezhen/protocol";
import {
  ACKNOWLEDGE_CLUSTER,
  MARK_READ_CONV,
  OWNER_STEP,
  RECEIPT,
  RECIPIENT_STEP,
  REQUEUE_CLUSTER,
  SEND_CHECK,
  SENDER_STEP,
  SET_UNREAD,
} from "./cluster-scripts.js";
import type { Logger } from "./engine.js";
import { conversationOwner } from "./keys.js";
import {
  integer,
  REFUSED_LIMITS,
  RedisMessageStore,
  receiptFrameParts,
  unexpected,
} from "./messages.js";
import { runScript, type ScriptArgument, strings, toEngineError } from "./script-runner.js";

/**
 * The steps after which a test may interrupt an append (injectClusterFaultForTests): a DM's
 * sender check and conversation step, a group entry's group step (cluster-groups.ts).
 */
export type AppendStep = "checked" | "conversation" | "group";

/** How often the pending entries of done DMs that no later send took along are removed. */
const CONFIRM_FLUSH_MS = 1000;

/** A DM before its seq: the original's id, timestamp and head for a retry. */
interface Draft {
  id: string;
  timestamp: string;
  head: string;
}

/** A DM's text, as far as the steps need it. */
interface StoredMessage {
  readonly id: string;
  readonly from: string;
  readonly to: string;
  readonly json: string;
}

export class ClusterMessageStore extends RedisMessageStore {
  /** Test-only: called after each step of an append; throwing there interrupts the append. */
  faultForTests: ((step: AppendStep) => void) | undefined;
  /** How long a DM may stay pending before a later send in its conversation repairs it. */
  repairAfterMs = 10_000;
  logger: Logger | undefined;
  /**
   * DMs done on both sides whose pending entry is still to be removed, by conversation. The next
   * OWNER_STEP of the conversation on this node removes them (no extra command on the hot path);
   * what is left is removed by a flush every CONFIRM_FLUSH_MS (well below repairAfterMs, so a
   * done DM is not handed out for repair).
   */
  private readonly confirmed = new Map<string, string[]>();
  private flushTimer: NodeJS.Timeout | undefined;

  override async append(input: AppendInput): Promise<AppendResult> {
    return (await this.send(input, false)) as AppendResult;
  }

  override appendIfAllowed(input: AppendInput): Promise<AppendResult | RateRefusal> {
    return this.send(input, true);
  }

  private async send(input: AppendInput, limited: boolean): Promise<AppendResult | RateRefusal> {
    const { keys } = this;
    const { from, to, clientMsgId } = input;
    // protocol encodeMessage without `,"seq":N}`, which OWNER_STEP appends once it knows N.
    const head = encodeMessageWithoutSeq({
      id: input.id,
      from,
      to,
      content: input.content,
      timestamp: input.timestamp,
      ...(clientMsgId === undefined ? {} : { clientMsgId }),
    }).slice(0, -1);
    const message: Draft = { id: input.id, timestamp: input.timestamp, head };
    const checked = clientMsgId !== undefined || limited;
    const ownerSends = conversationOwner(from, to) === from;
    let duplicate = false;

    let owner: unknown;
    if (checked && !ownerSends) {
      const numberOfKeys = 1 + (clientMsgId === undefined ? 0 : 1) + (limited ? 2 : 0);
      const args: ScriptArgument[] = [keys.conversations(from)];
      args.push(...this.checkKeys(input, limited));
      args.push(
        to,
        input.id,
        input.timestamp,
        head,
        IDEMPOTENCY_TTL_MS,
        clientMsgId === undefined ? "" : "1",
        limited ? "1" : "",
        ...this.checkArguments(head),
      );
      const reply = await runScript(this.client, { ...SEND_CHECK, numberOfKeys }, args, true);
      const outcome = this.checkOutcome(reply, message);
      if (outcome !== undefined) return outcome;
      duplicate = message.id !== input.id;
      this.faultForTests?.("checked");
      owner = await this.ownerStep(input, message, false, limited);
    } else {
      owner = await this.ownerStep(input, message, checked, limited);
      if (Array.isArray(owner) && owner[0] !== 0) {
        const outcome = this.checkOutcome(owner, message);
        if (outcome !== undefined) return outcome;
        // A retry: the original message, in a step of its own (its keys are named by its id).
        duplicate = true;
        owner = await this.ownerStep(input, message, false, limited);
      }
    }
    if (
      !Array.isArray(owner) ||
      owner[0] !== 0 ||
      typeof owner[1] !== "number" ||
      typeof owner[2] !== "string" ||
      typeof owner[3] !== "number"
    ) {
      unexpected("owner step", owner);
    }
    const [, seq, json, ownerPosition, ownerDelivered] = owner as [
      0,
      number,
      string,
      number,
      number,
    ];
    const repairs = strings(owner.slice(6), "owner step");
    this.faultForTests?.("conversation");

    const stored = { id: message.id, from, to, json };
    let senderPosition: number;
    let recipientPosition: number;
    let delivered: boolean;
    if (ownerSends) {
      senderPosition = ownerPosition;
      ({ position: recipientPosition, delivered } = await this.recipientStep(stored));
    } else {
      recipientPosition = ownerPosition;
      delivered = ownerDelivered === 1;
      senderPosition = await this.senderStep(stored, input.senderConnId);
    }
    const conversation = keys.conversationOf(from, to);
    // Both sides are done: the DM leaves the pending set (after the ack; a failure leaves it
    // there, and a later repair finds both sides done).
    this.confirm(conversation, message.id);
    for (let i = 0; i + 1 < repairs.length; i += 2) {
      void this.repair(conversation, repairs[i] as string, repairs[i + 1] as string);
    }
    return {
      messageId: message.id,
      timestamp: message.timestamp,
      duplicate,
      seq,
      status: delivered ? "delivered" : "queued",
      senderPosition,
      recipientPosition,
    };
  }

  /** The sender's idempotency, rate and quota keys, as far as this send has them. */
  private checkKeys(input: AppendInput, limited: boolean): string[] {
    const keys: string[] = [];
    if (input.clientMsgId !== undefined) {
      keys.push(this.keys.idempotency(input.from, input.clientMsgId));
    }
    if (limited) keys.push(this.keys.rate(input.from), this.keys.quota(input.from));
    return keys;
  }

  private checkArguments(head: string): ScriptArgument[] {
    return [
      this.rateLimit.limit,
      this.rateLimit.windowMs,
      this.quotas.newConversationsPerDay,
      this.quotas.bytesPerDay,
      // The stored text's bytes with a one-digit seq (see SEND_CHECK).
      Buffer.byteLength(head) + ',"seq":1}'.length,
    ];
  }

  /**
   * A check's answer: undefined to go on (for a retry, `message` becomes the original); a
   * refusal to return.
   */
  private checkOutcome(reply: unknown, message: Draft): RateRefusal | undefined {
    if (!Array.isArray(reply) || typeof reply[0] !== "number") unexpected("send check", reply);
    if (reply[0] === 0) return undefined;
    if (reply[0] === 1) {
      // A retry: finish the original message (its id, timestamp and text), whatever this one says.
      const record = String(reply[1]);
      const afterId = record.indexOf("|");
      const afterTimestamp = record.indexOf("|", afterId + 1);
      message.id = record.slice(0, afterId);
      message.timestamp = record.slice(afterId + 1, afterTimestamp);
      message.head = record.slice(afterTimestamp + 1);
      return undefined;
    }
    const limit = REFUSED_LIMITS[reply[0]];
    const retryAfterMs = reply[1];
    if (limit === undefined || typeof retryAfterMs !== "number") unexpected("send", reply);
    return { refused: true, retryAfterMs, limit };
  }

  /** OWNER_STEP for `message`; with `check`, the sender (the owner) is checked in it too. */
  private ownerStep(
    input: AppendInput,
    message: Draft,
    check: boolean,
    limited: boolean,
  ): Promise<unknown> {
    const { keys } = this;
    const { from, to } = input;
    const owner = conversationOwner(from, to);
    const ownerSends = owner === from;
    const other = ownerSends ? to : from;
    const conversation = keys.conversationOf(from, to);
    const args: ScriptArgument[] = [
      keys.conversationSeq(conversation),
      keys.conversationLog(conversation),
      keys.pending(conversation),
      keys.inboxPosition(owner),
      keys.inboxLog(owner),
      keys.textHeadOfUser(owner) + message.id,
      keys.conversations(owner),
      keys.conversationLast(owner),
      ownerSends ? keys.doneOut(owner, message.id) : keys.doneIn(owner, message.id),
      keys.queue(owner),
      keys.unread(owner),
    ];
    if (check) args.push(...this.checkKeys(input, limited));
    const numberOfKeys = args.length;
    args.push(
      message.id,
      message.head,
      this.retention.messageTtlMs,
      this.retention.maxEntries,
      this.repairAfterMs,
      keys.textHeadOfUser(owner),
      ownerSends ? "out" : "in",
      other,
      keys.userChannel(owner),
      input.senderConnId,
      IDEMPOTENCY_TTL_MS,
      check && input.clientMsgId !== undefined ? "1" : "",
      check && limited ? "1" : "",
      message.timestamp,
      IDEMPOTENCY_TTL_MS,
      ...this.checkArguments(message.head),
      ...this.takeConfirmed(conversation),
    );
    return runScript(this.client, { ...OWNER_STEP, numberOfKeys }, args, true);
  }

  private async recipientStep(
    message: StoredMessage,
  ): Promise<{ position: number; delivered: boolean }> {
    const { keys } = this;
    const { id, from, to, json } = message;
    const reply = await runScript(
      this.client,
      RECIPIENT_STEP,
      [
        keys.inboxPosition(to),
        keys.inboxLog(to),
        keys.textHeadOfUser(to) + id,
        keys.queue(to),
        keys.conversations(to),
        keys.conversationLast(to),
        keys.unread(to),
        keys.doneIn(to, id),
        id,
        from,
        json,
        keys.userChannel(to),
        this.retention.messageTtlMs,
        this.retention.maxEntries,
        IDEMPOTENCY_TTL_MS,
      ],
      true,
    );
    if (!Array.isArray(reply) || typeof reply[0] !== "number") unexpected("recipient step", reply);
    return { position: reply[0], delivered: reply[1] === 1 };
  }

  private async senderStep(message: StoredMessage, senderConnId: string): Promise<number> {
    const { keys } = this;
    const { id, from, to, json } = message;
    const reply = await runScript(
      this.client,
      SENDER_STEP,
      [
        keys.inboxPosition(from),
        keys.inboxLog(from),
        keys.textHeadOfUser(from) + id,
        keys.conversations(from),
        keys.conversationLast(from),
        keys.doneOut(from, id),
        id,
        to,
        json,
        keys.userChannel(from),
        senderConnId,
        this.retention.messageTtlMs,
        this.retention.maxEntries,
        IDEMPOTENCY_TTL_MS,
      ],
      true,
    );
    if (!Array.isArray(reply) || typeof reply[0] !== "number") unexpected("sender step", reply);
    return reply[0];
  }

  private confirm(conversation: string, id: string): void {
    const ids = this.confirmed.get(conversation);
    if (ids === undefined) this.confirmed.set(conversation, [id]);
    else ids.push(id);
    if (this.flushTimer === undefined) {
      this.flushTimer = setTimeout(() => this.flushConfirmed(), CONFIRM_FLUSH_MS);
      this.flushTimer.unref();
    }
  }

  private takeConfirmed(conversation: string): string[] {
    const ids = this.confirmed.get(conversation);
    if (ids === undefined) return [];
    this.confirmed.delete(conversation);
    return ids;
  }

  /** Removes the pending entries no OWNER_STEP took along (a failure leaves them for repair). */
  flushConfirmed(): void {
    this.flushTimer = undefined;
    for (const [conversation, ids] of this.confirmed) {
      this.client.zrem(this.keys.pending(conversation), ...ids).catch(() => {});
    }
    this.confirmed.clear();
  }

  /**
   * Runs the non-owner side of a DM left pending (the owner's side is done with its seq): a
   * no-op when it was done, else it completes the DM.
   */
  private async repair(conversation: string, id: string, json: string): Promise<void> {
    try {
      const { from, to } = JSON.parse(json) as { from: unknown; to: unknown };
      if (typeof from !== "string" || typeof to !== "string") return;
      const message = { id, from, to, json };
      const position =
        conversationOwner(from, to) === from
          ? (await this.recipientStep(message)).position
          : await this.senderStep(message, "");
      this.confirm(conversation, id);
      this.logger?.info({ messageId: id, position }, "repaired a direct message left half-done");
    } catch (error) {
      // Still pending: a later send in the conversation tries again.
      this.logger?.warn({ err: error, messageId: id }, "could not repair a direct message");
    }
  }

  override async acknowledge(userId: string, upTo: number): Promise<void> {
    const position = integer(upTo);
    if (position === undefined) return;
    const { keys } = this;
    const reply = await runScript(this.client, ACKNOWLEDGE_CLUSTER, [
      keys.inboxLog(userId),
      keys.inboxPosition(userId),
      keys.acked(userId),
      keys.delivered(userId),
      position,
      JSON.stringify(userId),
      keys.textHeadOfUser(userId),
    ]);
    const flat = strings(reply, "acknowledge");
    const [frameHead, frameTail] = receiptFrameParts("delivered", userId);
    const sends: Promise<unknown>[] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) {
      const other = flat[i] as string;
      sends.push(
        runScript(this.client, RECEIPT, [
          keys.receipts(other),
          `delivered|${userId}`,
          frameHead + flat[i + 1] + frameTail,
          keys.userChannel(other),
        ]),
      );
    }
    await Promise.all(sends);
  }

  override async markRead(userId: string, other: string, upTo: number): Promise<void> {
    const seq = integer(upTo);
    if (seq === undefined) return;
    const { keys } = this;
    const conversation = keys.conversationOf(userId, other);
    const reply = await runScript(this.client, MARK_READ_CONV, [
      keys.conversationSeq(conversation),
      keys.conversationLog(conversation),
      keys.readMarks(conversation),
      userId,
      seq,
      JSON.stringify(other),
      keys.textHeadOfConversation(conversation),
    ]);
    if (!Array.isArray(reply) || reply[0] !== 1) return;
    const [, mark, unread] = reply as [number, number, number];
    const [frameHead, frameTail] = receiptFrameParts("read", userId);
    await Promise.all([
      runScript(this.client, SET_UNREAD, [
        keys.read(userId),
        keys.unread(userId),
        other,
        mark,
        unread,
      ]),
      runScript(this.client, RECEIPT, [
        keys.receipts(other),
        `read|${userId}`,
        frameHead + mark + frameTail,
        keys.userChannel(other),
      ]),
    ]);
  }

  override async requeueIfOffline(userId: string, message: QueuedMessage): Promise<boolean> {
    try {
      const connections = await this.client.hget(this.keys.presenceCount, userId);
      if (Number(connections ?? "0") > 0) return false;
    } catch (error) {
      throw toEngineError(error);
    }
    const reply = await runScript(this.client, REQUEUE_CLUSTER, [
      this.keys.queue(userId),
      this.keys.textHeadOfUser(userId) + message.messageId,
      message.position,
      message.messageId,
      this.retention.maxEntries,
      this.retention.messageTtlMs,
    ]);
    return reply === 1;
  }
}
