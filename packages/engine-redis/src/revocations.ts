/**
 * RevocationStore on Redis: the revocations in one hash (`<p>revoked`), and a copy of it on every
 * node, so that the check at each upgrade is a map lookup, not a round trip. The copy is loaded
 * at start (HGETALL) and kept by the `<p>revocations` channel, which REVOKE publishes to in the
 * same step as it writes the hash; after the subscriber connection reconnects (revocations may
 * have been published while it was away) it is loaded again.
 */
import type { RevocationStore } from "@mrezhen/engine";
import type { BackendKeys } from "./backend-keys.js";
import { REVOKE } from "./backend-scripts.js";
import { type RedisClient, runScript, toEngineError } from "./script-runner.js";

export class RedisRevocationStore implements RevocationStore {
  private readonly before = new Map<string, number>();

  constructor(
    private readonly client: RedisClient,
    private readonly keys: BackendKeys,
  ) {}

  async revoke(userId: string, before: number): Promise<void> {
    const reply = await runScript(this.client, REVOKE, [
      this.keys.revoked,
      userId,
      Math.floor(before),
      this.keys.revocationChannel,
    ]);
    // This node's copy now, without waiting for its own broadcast.
    this.raise(userId, Number(reply));
  }

  revokedBefore(userId: string): number | undefined {
    return this.before.get(userId);
  }

  /** Loads every revocation (start, and after the subscriber reconnected). */
  async load(): Promise<void> {
    let all: Record<string, string>;
    try {
      all = await this.client.hgetall(this.keys.revoked);
    } catch (error) {
      throw toEngineError(error);
    }
    for (const [userId, before] of Object.entries(all)) this.raise(userId, Number(before));
  }

  /** A message of the revocations channel: `<before>|<userId>`. */
  receive(payload: string): void {
    const bar = payload.indexOf("|");
    if (bar < 0) return;
    this.raise(payload.slice(bar + 1), Number(payload.slice(0, bar)));
  }

  private raise(userId: string, before: number): void {
    if (!Number.isFinite(before)) return;
    const current = this.before.get(userId);
    if (current === undefined || current < before) this.before.set(userId, before);
  }
}
