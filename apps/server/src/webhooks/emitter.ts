import { randomUUID } from "node:crypto";
import type { EventQueue } from "@mrezhen/engine";
import type { ChatEvents, Logger, StoredMessage } from "../chat/ports.js";

/** The event types a webhook receives. */
export type WebhookEventType = "message.stored" | "user.online" | "user.offline";

/**
 * Turns what the chat core reports into service events and puts them in the engine's durable
 * queue (EventQueue), from which every node's webhook worker delivers them.
 *
 * Cost on the send path: one queue write per stored message (an XADD on Redis), issued right
 * after the ack in the same tick as the append's reply and never awaited by the sender; nothing
 * at all when webhooks are off (the core is given no ChatEvents then).
 *
 * The crash window: the event is written after the message is stored, not in the same atomic
 * step (the append script is not ours to change). A node that dies between the two (a window of
 * one Redis round trip) stores the message without its `message.stored` event. Every event that
 * reached the queue is delivered at least once.
 *
 * Presence: every node hears every change (the engine's broadcast), and each queues it with the
 * change's version; the queue keeps one per version (EventQueue.publish), so the event is
 * queued once even if the node whose user it was died (its sweep is heard by all). Changes a
 * node infers after losing track of the broadcast carry no version and are not queued: the
 * nodes that did not lose track queued them.
 */
export class WebhookEmitter implements ChatEvents {
  /** Queue writes that failed (engine down): the events are lost, and counted. */
  lost = 0;

  constructor(
    private readonly queue: EventQueue,
    private readonly log: Logger,
  ) {}

  messageStored(message: StoredMessage): void {
    const data: Record<string, unknown> = {
      messageId: message.id,
      from: message.from,
      to: message.to,
      content: message.content,
      timestamp: message.timestamp,
      seq: message.seq,
      status: message.status,
    };
    if (message.clientMsgId !== undefined) data["clientMsgId"] = message.clientMsgId;
    this.publish("message.stored", data, undefined);
  }

  presenceChanged(userId: string, status: "online" | "offline", version: number | undefined): void {
    if (version === undefined) return;
    this.publish(
      status === "online" ? "user.online" : "user.offline",
      { userId, version },
      version,
    );
  }

  private publish(
    type: WebhookEventType,
    data: Record<string, unknown>,
    presenceVersion: number | undefined,
  ): void {
    // The event's id travels with it through every retry and takeover: receivers deduplicate
    // on it (the `webhook-id` header).
    const payload = JSON.stringify({
      id: `evt_${randomUUID()}`,
      type,
      timestamp: new Date().toISOString(),
      data,
    });
    this.queue.publish(payload, presenceVersion).catch((error: unknown) => {
      this.lost++;
      this.log.error({ err: error, type }, "could not queue a webhook event; it is lost");
    });
  }
}
