import type { PresenceStore, Registration } from "../ports.js";
import type { MemoryBroker } from "./broker.js";

/** The queue lives in the message store, which this store does not see: the flush reads it. */
const MAY_HOLD_MESSAGES: Registration = { queueMayHoldMessages: true };

/** Presence of a single node: a connection count per online user. */
export class MemoryPresenceStore implements PresenceStore {
  private readonly connections = new Map<string, number>();
  /** The online users, kept beside the counts so changes can hand out a view at no cost. */
  private readonly online = new Set<string>();
  /** One node: its view is the store itself, changed in the same step as it announces. */
  readonly view: ReadonlySet<string> = this.online;

  /** Changes announced so far: each change's version (PresenceChange.version). */
  private version = 0;

  constructor(private readonly broker: MemoryBroker) {}

  async connect(userId: string): Promise<Registration> {
    const count = this.connections.get(userId) ?? 0;
    this.connections.set(userId, count + 1);
    if (count > 0) return MAY_HOLD_MESSAGES;
    this.online.add(userId);
    this.broker.announce({
      userId,
      status: "online",
      online: this.online,
      version: ++this.version,
    });
    return MAY_HOLD_MESSAGES;
  }

  async disconnect(userId: string): Promise<void> {
    const count = this.connections.get(userId);
    if (count === undefined) return;
    if (count > 1) {
      this.connections.set(userId, count - 1);
      return;
    }
    this.connections.delete(userId);
    this.online.delete(userId);
    this.broker.announce({
      userId,
      status: "offline",
      online: this.online,
      version: ++this.version,
    });
  }

  async onlineUsers(): Promise<string[]> {
    return [...this.online];
  }

  async connectionCounts(users: readonly string[]): Promise<number[]> {
    return users.map((userId) => this.connections.get(userId) ?? 0);
  }

  /** Synchronous view for the message store, which decides "queued" against it. */
  isOnline(userId: string): boolean {
    return this.online.has(userId);
  }

  /** Connections of `userId` on this (the only) node. */
  connectionCount(userId: string): number {
    return this.connections.get(userId) ?? 0;
  }
}
