import type { EventQueue, EventQueueStats, QueuedEvent } from "../ports.js";

interface Entry {
  readonly entryId: string;
  readonly payload: string;
  readonly publishedAt: number;
  /** Handed to the worker and not acknowledged yet: not handed out again until idle too long. */
  takenAt: number | undefined;
}

/**
 * The event queue of a single node, in memory: as durable as the process (a node that dies
 * loses it, and with it the events it had not delivered; the Redis engine's queue survives).
 */
export class MemoryEventQueue implements EventQueue {
  /** Entries in publish order (a Map keeps insertion order; deletes are O(1)). */
  private readonly entries = new Map<string, Entry>();
  private sequence = 0;
  private lastPresenceVersion = 0;
  private wake: (() => void) | undefined;

  constructor(private readonly now: () => number) {}

  async publish(payload: string, presenceVersion?: number): Promise<void> {
    if (presenceVersion !== undefined) {
      if (presenceVersion <= this.lastPresenceVersion) return;
      this.lastPresenceVersion = presenceVersion;
    }
    const entryId = String(++this.sequence);
    this.entries.set(entryId, {
      entryId,
      payload,
      publishedAt: this.now(),
      takenAt: undefined,
    });
    this.wake?.();
  }

  async take(count: number, waitMs: number, claimIdleMs: number): Promise<QueuedEvent[]> {
    let taken = this.takeNow(count, claimIdleMs);
    if (taken.length > 0 || waitMs <= 0) return taken;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, waitMs);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    this.wake = undefined;
    taken = this.takeNow(count, claimIdleMs);
    return taken;
  }

  private takeNow(count: number, claimIdleMs: number): QueuedEvent[] {
    const now = this.now();
    const taken: QueuedEvent[] = [];
    for (const entry of this.entries.values()) {
      if (taken.length >= count) break;
      if (entry.takenAt !== undefined && now - entry.takenAt < claimIdleMs) continue;
      const claimed = entry.takenAt !== undefined;
      entry.takenAt = now;
      taken.push({
        entryId: entry.entryId,
        payload: entry.payload,
        publishedAt: entry.publishedAt,
        claimed,
      });
    }
    return taken;
  }

  async keep(entryIds: readonly string[]): Promise<void> {
    const now = this.now();
    for (const id of entryIds) {
      const entry = this.entries.get(id);
      if (entry !== undefined) entry.takenAt = now;
    }
  }

  async acknowledge(entryIds: readonly string[]): Promise<void> {
    for (const id of entryIds) this.entries.delete(id);
  }

  async stats(): Promise<EventQueueStats> {
    const oldest = this.entries.values().next();
    return {
      depth: this.entries.size,
      oldestAgeMs: oldest.done ? 0 : Math.max(0, this.now() - oldest.value.publishedAt),
    };
  }
}
