/**
 * PresenceStore on Redis, with per-node liveness.
 *
 * Each node counts its own connections per user in `<p>presence:node:<nodeId>`; the cluster-wide
 * totals live in `<p>presence:count` and the online users in `<p>presence:online`. connect and
 * disconnect are one script each (CONNECT, DISCONNECT: one round trip, O(1) however many users
 * are online), which also publishes a presence delta on `<p>broadcast` when a user's total goes
 * 0→1 or 1→0 (numbered by `<p>presence:version`). Each node builds the online set from those
 * deltas itself (presence-mirror.ts): no script sends the set.
 *
 * Liveness: a node refreshes `<p>node-alive:<nodeId>` (PX nodeTtlMs) every heartbeatIntervalMs,
 * and in the same script (TICK) drops the registrations of every node whose key expired, so the
 * users of a crashed node go offline within nodeTtlMs + heartbeatIntervalMs (≤ 12 s by default).
 * TICK is O(nodes) when no node is dead; sweeping a dead node is O(its users), one delta per
 * user who went offline. A node whose own key had lapsed sweeps nothing in that tick (see TICK).
 *
 * The node's own truth — connections it registered and has not unregistered — is kept here in
 * memory. REASSERT writes it back over the node's hash (fixing totals, announcing changes):
 * at start (empty: clears what a previous process with the same NODE_ID left), after every
 * reconnect (during an outage other nodes may have swept this one as dead, or Redis may have
 * restarted empty), when the heartbeat finds the node's key had expired, and after a failed
 * connect/disconnect (whose effect on Redis is unknown: the reply may have been lost).
 * The local count moves when a call is issued, not when it answers: commands on the connection
 * run in order, so a REASSERT sent after a CONNECT carries that connection too.
 */
import type { PresenceStore } from "@mrezhen/engine";
import type { Redis } from "ioredis";
import type { Keys } from "./keys.js";
import {
  integers,
  runScript,
  type ScriptArgument,
  strings,
  toEngineError,
} from "./script-runner.js";
import { CONNECT, DISCONNECT, DROP_NODE, REASSERT, TICK } from "./scripts.js";

export interface TickResult {
  /**
   * False when this node's liveness key had expired (it may have been swept): it then swept
   * nothing, and re-asserts.
   */
  readonly wasAlive: boolean;
  /** Dead nodes this tick removed. */
  readonly swept: number;
}

export class RedisPresenceStore implements PresenceStore {
  /** userId → connections registered by this node (the local truth). */
  private readonly local = new Map<string, number>();
  /** Set when Redis may disagree with the local truth; the next heartbeat re-asserts. */
  needsReassert = false;

  constructor(
    private readonly client: Redis,
    private readonly keys: Keys,
    private readonly nodeId: string,
    private readonly nodeTtlMs: number,
    /**
     * The broker's presence mirror (presence-mirror.ts): the set it announces changes of, so
     * the view and the changes agree by construction.
     */
    readonly view: ReadonlySet<string>,
  ) {}

  async connect(userId: string): Promise<void> {
    this.local.set(userId, (this.local.get(userId) ?? 0) + 1);
    try {
      await runScript(this.client, CONNECT, [
        this.keys.presenceThisNode,
        this.keys.presenceCount,
        this.keys.presenceOnline,
        this.keys.nodes,
        this.keys.presenceVersion,
        userId,
        this.nodeId,
        this.keys.broadcastChannel,
      ]);
    } catch (error) {
      // The caller treats this connection as not registered; Redis may have it anyway.
      this.forget(userId);
      this.needsReassert = true;
      throw error;
    }
  }

  async disconnect(userId: string): Promise<void> {
    if (!this.forget(userId)) return;
    try {
      await runScript(this.client, DISCONNECT, [
        this.keys.presenceThisNode,
        this.keys.presenceCount,
        this.keys.presenceOnline,
        this.keys.presenceVersion,
        userId,
        this.keys.broadcastChannel,
      ]);
    } catch (error) {
      // The connection is gone whatever Redis says: the re-assert will remove it there.
      this.needsReassert = true;
      throw error;
    }
  }

  async onlineUsers(): Promise<string[]> {
    try {
      return strings(await this.client.smembers(this.keys.presenceOnline), "smembers");
    } catch (error) {
      throw toEngineError(error);
    }
  }

  async connectionCounts(users: readonly string[]): Promise<number[]> {
    if (users.length === 0) return [];
    try {
      const counts = await this.client.hmget(this.keys.presenceCount, ...users);
      return counts.map((count) => (count === null ? 0 : Math.max(0, Number(count))));
    } catch (error) {
      throw toEngineError(error);
    }
  }

  /** Replaces this node's registrations in Redis by the local truth and registers the node. */
  async reassert(): Promise<number> {
    this.needsReassert = false;
    const args: ScriptArgument[] = [
      this.keys.presenceThisNode,
      this.keys.presenceCount,
      this.keys.presenceOnline,
      this.keys.nodes,
      this.keys.aliveThisNode,
      this.keys.presenceVersion,
      this.nodeId,
      this.nodeTtlMs,
      this.keys.broadcastChannel,
    ];
    for (const [userId, count] of this.local) args.push(userId, count);
    try {
      const changed = await runScript(this.client, REASSERT, args);
      return typeof changed === "number" ? changed : 0;
    } catch (error) {
      this.needsReassert = true;
      throw error;
    }
  }

  /** Heartbeat + sweep of dead nodes, one script. */
  async tick(): Promise<TickResult> {
    const reply = await runScript(this.client, TICK, [
      this.keys.nodes,
      this.keys.aliveThisNode,
      this.keys.presenceCount,
      this.keys.presenceOnline,
      this.keys.presenceVersion,
      this.nodeId,
      this.nodeTtlMs,
      this.keys.presenceNodeHead,
      this.keys.aliveHead,
      this.keys.broadcastChannel,
    ]);
    const [alive, swept] = integers<[number, number]>(reply, 2, "tick");
    return { wasAlive: alive === 1, swept };
  }

  /** Removes this node and its registrations (close): its users go offline now, not at expiry. */
  async unregister(): Promise<void> {
    await runScript(this.client, DROP_NODE, [
      this.keys.presenceThisNode,
      this.keys.aliveThisNode,
      this.keys.presenceCount,
      this.keys.presenceOnline,
      this.keys.nodes,
      this.keys.presenceVersion,
      this.nodeId,
      this.keys.broadcastChannel,
    ]);
    this.local.clear();
  }

  /** Takes one connection of `userId` off the local truth; false when it had none. */
  private forget(userId: string): boolean {
    const count = this.local.get(userId);
    if (count === undefined) return false;
    if (count > 1) this.local.set(userId, count - 1);
    else this.local.delete(userId);
    return true;
  }
}
