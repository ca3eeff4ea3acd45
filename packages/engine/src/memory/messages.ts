import { encodeMessage } from "@mrezhen/protocol";
import type { AppendInput, AppendResult, MessageStore, QueuedMessage } from "../ports.js";
import type { MemoryBroker } from "./broker.js";
import type { MemoryPresenceStore } from "./presence.js";

interface Stored {
  readonly json: string;
}

/**
 * Messages of a single node, in process memory. Everything here is gone when the process exits:
 * the memory engine is for one node, development and tests; use the Redis engine where acked
 * messages must outlive a restart.
 */
export class MemoryMessageStore implements MessageStore {
  private readonly messages = new Map<string, Stored>();
  /** Conversation key → stored message texts in seq order (index = seq - 1). */
  private readonly conversations = new Map<string, string[]>();
  /** User → last inbox position handed out. */
  private readonly positions = new Map<string, number>();
  private readonly queues = new Map<string, QueuedMessage[]>();

  constructor(
    private readonly broker: MemoryBroker,
    private readonly presence: MemoryPresenceStore,
  ) {}

  async append(input: AppendInput): Promise<AppendResult> {
    const key = conversationKey(input.from, input.to);
    let conversation = this.conversations.get(key);
    if (conversation === undefined) {
      conversation = [];
      this.conversations.set(key, conversation);
    }
    const seq = conversation.length + 1;
    const messageJson = encodeMessage({
      id: input.id,
      from: input.from,
      to: input.to,
      content: input.content,
      timestamp: input.timestamp,
      seq,
    });
    conversation.push(messageJson);
    this.messages.set(input.id, { json: messageJson });
    const senderPosition = this.nextPosition(input.from);
    const recipientPosition = this.nextPosition(input.to);

    let status: AppendResult["status"] = "delivered";
    if (!this.presence.isOnline(input.to)) {
      status = "queued";
      this.enqueue(input.to, { messageId: input.id, messageJson, position: recipientPosition });
    } else {
      this.broker.publish(input.to, {
        kind: "message",
        messageId: input.id,
        messageJson,
        position: recipientPosition,
      });
    }
    if (this.presence.connectionCount(input.from) > 1) {
      this.broker.publish(input.from, {
        kind: "message",
        messageId: input.id,
        messageJson,
        position: senderPosition,
        excludeConnId: input.senderConnId,
      });
    }
    return { seq, status, senderPosition, recipientPosition };
  }

  async history(userA: string, userB: string, limit: number): Promise<string[]> {
    const conversation = this.conversations.get(conversationKey(userA, userB));
    if (conversation === undefined) return [];
    return conversation.slice(Math.max(0, conversation.length - limit));
  }

  async takeQueued(userId: string): Promise<QueuedMessage[]> {
    const queue = this.queues.get(userId);
    if (queue === undefined) return [];
    this.queues.delete(userId);
    return queue;
  }

  async requeueIfOffline(userId: string, messageId: string, position: number): Promise<boolean> {
    const stored = this.messages.get(messageId);
    if (stored === undefined || this.presence.isOnline(userId)) return false;
    this.enqueue(userId, { messageId, messageJson: stored.json, position });
    return true;
  }

  private enqueue(userId: string, entry: QueuedMessage): void {
    const queue = this.queues.get(userId);
    if (queue === undefined) {
      this.queues.set(userId, [entry]);
      return;
    }
    // Requeued entries can arrive after newer ones: keep the queue in position order.
    let index = queue.length;
    while (index > 0 && (queue[index - 1] as QueuedMessage).position > entry.position) index--;
    queue.splice(index, 0, entry);
  }

  private nextPosition(userId: string): number {
    const position = (this.positions.get(userId) ?? 0) + 1;
    this.positions.set(userId, position);
    return position;
  }
}

/** One key per unordered pair of users; the length prefix makes it unambiguous for any ids. */
export function conversationKey(userA: string, userB: string): string {
  const [first, second] = userA < userB ? [userA, userB] : [userB, userA];
  return `${first.length}:${first}${second}`;
}
