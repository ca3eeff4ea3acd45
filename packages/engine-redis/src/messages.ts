/**
 * MessageStore on Redis. Round trips (each one EVALSHA, see scripts.ts):
 * - append: 1 (APPEND: seq, positions, text, history, inboxes, queue-or-publish, sender copy);
 * - history: 1 (HISTORY: ZRANGE of the conversation + MGET of the texts inside the script);
 * - takeQueued: 1 (TAKE_QUEUED: read and delete the queue, with the texts);
 * - requeueIfOffline: 1 (REQUEUE_IF_OFFLINE: check presence and add, atomically).
 *
 * A direct message therefore costs the node two round trips in all: RateLimiter.consume and
 * MessageStore.append (test/round-trips.test.ts counts them with MONITOR).
 *
 * Messages have no expiry: history is kept until an operator trims it.
 */
import type { AppendInput, AppendResult, MessageStore, QueuedMessage } from "@mrezhen/engine";
import type { Redis } from "ioredis";
import type { Keys } from "./keys.js";
import { integers, runScript, strings } from "./script-runner.js";
import { APPEND, HISTORY, REQUEUE_IF_OFFLINE, TAKE_QUEUED } from "./scripts.js";

export class RedisMessageStore implements MessageStore {
  constructor(
    private readonly client: Redis,
    private readonly keys: Keys,
  ) {}

  async append(input: AppendInput): Promise<AppendResult> {
    const { keys } = this;
    const conversation = keys.conversationOf(input.from, input.to);
    // protocol encodeMessage without `,"seq":N}`, which the script appends once it knows N.
    // Same keys in the same order, so the stored text is byte-identical to encodeMessage's.
    const head = JSON.stringify({
      id: input.id,
      from: input.from,
      to: input.to,
      content: input.content,
      timestamp: input.timestamp,
    }).slice(0, -1);
    const reply = await runScript(this.client, APPEND, [
      keys.conversationSeq(conversation),
      keys.conversation(conversation),
      keys.message(input.id),
      keys.inboxPosition(input.from),
      keys.inboxPosition(input.to),
      keys.inbox(input.from),
      keys.inbox(input.to),
      keys.presenceCount,
      keys.queue(input.to),
      input.id,
      input.from,
      input.to,
      head,
      keys.userChannel(input.to),
      keys.userChannel(input.from),
      input.senderConnId,
    ]);
    const [seq, delivered, senderPosition, recipientPosition] = integers<
      [number, number, number, number]
    >(reply, 4, "append");
    return {
      seq,
      status: delivered === 1 ? "delivered" : "queued",
      senderPosition,
      recipientPosition,
    };
  }

  async history(userA: string, userB: string, limit: number): Promise<string[]> {
    if (!(limit >= 1)) return [];
    const conversation = this.keys.conversation(this.keys.conversationOf(userA, userB));
    const reply = await runScript(this.client, HISTORY, [
      conversation,
      Math.min(Math.floor(limit), Number.MAX_SAFE_INTEGER),
      this.keys.messageHead,
    ]);
    return strings(reply, "history");
  }

  async takeQueued(userId: string): Promise<QueuedMessage[]> {
    const reply = await runScript(this.client, TAKE_QUEUED, [
      this.keys.queue(userId),
      this.keys.messageHead,
    ]);
    const flat = strings(reply, "takeQueued");
    const queued: QueuedMessage[] = [];
    for (let i = 0; i + 2 < flat.length; i += 3) {
      queued.push({
        messageId: flat[i] as string,
        position: Number(flat[i + 1]),
        messageJson: flat[i + 2] as string,
      });
    }
    return queued;
  }

  async requeueIfOffline(userId: string, messageId: string, position: number): Promise<boolean> {
    const reply = await runScript(this.client, REQUEUE_IF_OFFLINE, [
      this.keys.presenceCount,
      this.keys.queue(userId),
      this.keys.message(messageId),
      userId,
      position,
      messageId,
    ]);
    return reply === 1;
  }
}
