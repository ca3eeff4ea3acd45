import type { RevocationStore } from "../ports.js";

/** Revocations of a single node: a map, which is also the node's copy. */
export class MemoryRevocationStore implements RevocationStore {
  private readonly before = new Map<string, number>();

  async revoke(userId: string, before: number): Promise<void> {
    const current = this.before.get(userId);
    if (current === undefined || current < before) this.before.set(userId, before);
  }

  revokedBefore(userId: string): number | undefined {
    return this.before.get(userId);
  }
}
