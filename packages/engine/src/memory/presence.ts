import { presenceFrame } from "@mrezhen/protocol";
import type { PresenceStore } from "../ports.js";
import type { MemoryBroker } from "./broker.js";

/** Presence of a single node: a connection count per online user. */
export class MemoryPresenceStore implements PresenceStore {
  private readonly connections = new Map<string, number>();

  constructor(private readonly broker: MemoryBroker) {}

  async connect(userId: string): Promise<void> {
    const count = this.connections.get(userId) ?? 0;
    this.connections.set(userId, count + 1);
    if (count === 0) this.broker.broadcast(presenceFrame(userId, "online", this.list()));
  }

  async disconnect(userId: string): Promise<void> {
    const count = this.connections.get(userId);
    if (count === undefined) return;
    if (count > 1) {
      this.connections.set(userId, count - 1);
      return;
    }
    this.connections.delete(userId);
    this.broker.broadcast(presenceFrame(userId, "offline", this.list()));
  }

  async onlineUsers(): Promise<string[]> {
    return this.list();
  }

  /** Synchronous view for the message store, which decides "queued" against it. */
  isOnline(userId: string): boolean {
    return this.connections.has(userId);
  }

  /** Connections of `userId` on this (the only) node. */
  connectionCount(userId: string): number {
    return this.connections.get(userId) ?? 0;
  }

  private list(): string[] {
    return [...this.connections.keys()];
  }
}
