import type { Broker, BrokerHandler, ControlEvent, PresenceChange, UserEvent } from "../ports.js";

/**
 * The broker of a single node: "publishing" is a direct call into this node's handler, for the
 * users it subscribed to. Delivery is synchronous and therefore in publish order.
 */
export class MemoryBroker implements Broker {
  private handler: BrokerHandler | undefined;
  private readonly subscribed = new Set<string>();

  setHandler(handler: BrokerHandler): void {
    this.handler = handler;
  }

  async subscribe(userId: string): Promise<void> {
    this.subscribed.add(userId);
  }

  async unsubscribe(userId: string): Promise<void> {
    this.subscribed.delete(userId);
  }

  /** Routes an event to this node if it holds `userId`; returns whether it did. */
  publish(userId: string, event: UserEvent): boolean {
    if (this.handler === undefined || !this.subscribed.has(userId)) return false;
    this.handler.onUserEvent(userId, event);
    return true;
  }

  async publishFrame(userId: string, frame: string): Promise<void> {
    this.publish(userId, { kind: "frame", frame });
  }

  async publishControl(userId: string, event: ControlEvent): Promise<void> {
    this.publish(userId, event);
  }

  announce(change: PresenceChange): void {
    this.handler?.onPresence(change);
  }
}
