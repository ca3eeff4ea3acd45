/**
 * PresenceStore on Redis, with per-node liveness.
 *
 * Each node counts its own connections per user in `<p>presence:node:<nodeId>`; the cluster-wide
 * totals live in `<p>presence:count` and the online users in `<p>presence:online`. connect and
 * disconnect cost O(1) each however many users are online, and publish a presence delta on
 * `<p>broadcast` when a user's total goes 0→1 or 1→0 (numbered by `<p>presence:version`). Each
 * node builds the online set from those deltas itself (presence-mirror.ts): no script sends the set.
 *
 * Batching: the calls are queued and sent together, one PRESENCE_BATCH script for up to
 * MAX_BATCH of them, in the order they were made. A batch leaves as soon as the event loop has
 * finished its current phase (setImmediate: every call made by the same burst of I/O callbacks
 * rides along), while fewer than MAX_IN_FLIGHT batches wait for Redis; otherwise calls wait for
 * one to come back. An idle node thus sends each call at once, and a node in a connect or
 * disconnect storm sends a few hundred per round trip instead of one: when 100,000 clients
 * arrived or left within seconds, one script per connection kept Redis busy long enough that
 * nodes' command connections timed out. Each call's promise settles with its batch: resolved once
 * the script ran, rejected with the batch's error. Calls keep their order on the connection, so
 * every guarantee of a lone call holds (ports.ts): a connect resolves only once the user is
 * registered and announced.
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
 * run in order, so a REASSERT sent after a batch carries that batch's connections too. Calls still
 * queued when a REASSERT (or the node's unregister) is sent leave first, in the same write: the
 * REASSERT already counts them, and sent after it they would count twice.
 */
import type { PresenceStore, Registration } from "@mrezhen/engine";
import { Cluster } from "ioredis";
import type { Keys } from "./keys.js";
import {
  coalesceWrites,
  integers,
  numbers,
  type RedisClient,
  runScript,
  type ScriptArgument,
  strings,
  toEngineError,
} from "./script-runner.js";
import { DROP_NODE, PRESENCE_BATCH, REASSERT, TICK } from "./scripts.js";

/**
 * Calls per PRESENCE_BATCH script. A call costs Redis about 10–20 µs (more with many subscribers
 * to the broadcast channel): 256 keep one script to a few milliseconds, so a storm never holds up
 * other clients' commands (messages) for long.
 */
export const MAX_BATCH = 256;
/**
 * Batches waiting for Redis at once. More than one keeps Redis busy while the node reads a reply
 * and sends the next batch; a few bound how much a slow Redis has queued from one node.
 */
const MAX_IN_FLIGHT = 4;

/** One queued connect (`+<userId>`) or disconnect (`-<userId>`) and its caller's promise. */
interface QueuedCall {
  readonly call: string;
  readonly resolve: (registration: Registration) => void;
  readonly reject: (error: unknown) => void;
}

export interface TickResult {
  /**
   * False when this node's liveness key had expired (it may have been swept): it then swept
   * nothing, and re-asserts.
   */
  readonly wasAlive: boolean;
  /** Dead nodes this tick removed. */
  readonly swept: number;
}

/** What a connect resolves with (a disconnect's caller ignores it). */
const QUEUE_EMPTY: Registration = { queueMayHoldMessages: false };
const MAY_HOLD_MESSAGES: Registration = { queueMayHoldMessages: true };

export class RedisPresenceStore implements PresenceStore {
  /** userId → connections registered by this node (the local truth). */
  private readonly local = new Map<string, number>();
  /**
   * Whether PRESENCE_BATCH checks the connecting users' offline queues: not on Redis Cluster,
   * where the queue is in another slot than presence, so no script can see both.
   */
  private readonly queuesChecked: boolean;
  /** Set when Redis may disagree with the local truth; the next heartbeat re-asserts. */
  needsReassert = false;
  /** Calls not sent yet, oldest first. */
  private queue: QueuedCall[] = [];
  private inFlight = 0;
  private flushScheduled = false;

  constructor(
    private readonly client: RedisClient,
    private readonly keys: Keys,
    private readonly nodeId: string,
    private readonly nodeTtlMs: number,
    /**
     * The broker's presence mirror (presence-mirror.ts): the set it announces changes of, so
     * the view and the changes agree by construction.
     */
    readonly view: ReadonlySet<string>,
  ) {
    this.queuesChecked = !(client instanceof Cluster);
  }

  async connect(userId: string): Promise<Registration> {
    this.local.set(userId, (this.local.get(userId) ?? 0) + 1);
    try {
      return await this.enqueue(`+${userId}`);
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
      await this.enqueue(`-${userId}`);
    } catch (error) {
      // The connection is gone whatever Redis says: the next re-assert removes it there (the
      // heartbeat's, or the reconnect's). It is never dropped, even when the caller gives up.
      this.needsReassert = true;
      throw error;
    }
  }

  /** Calls queued and not yet sent (for tests and metrics). */
  get queued(): number {
    return this.queue.length;
  }

  private enqueue(call: string): Promise<Registration> {
    return new Promise<Registration>((resolve, reject) => {
      this.queue.push({ call, resolve, reject });
      if (!this.flushScheduled && this.inFlight < MAX_IN_FLIGHT) {
        this.flushScheduled = true;
        setImmediate(this.flushSoon);
        // Corked from now until after the batch leaves (the uncork is scheduled after the
        // flush): the commands issued later in this turn, such as a connect's contacts and
        // groups reads, leave with the batch in one write rather than in a write of their own.
        coalesceWrites(this.client);
      }
    });
  }

  private readonly flushSoon = (): void => {
    this.flushScheduled = false;
    while (this.queue.length > 0 && this.inFlight < MAX_IN_FLIGHT) this.sendBatch();
  };

  /** Sends every queued call now, whatever is in flight (before a REASSERT or DROP_NODE). */
  private sendQueued(): void {
    while (this.queue.length > 0) this.sendBatch();
  }

  private sendBatch(): void {
    const calls = this.queue.length <= MAX_BATCH ? this.queue : this.queue.slice(0, MAX_BATCH);
    this.queue = calls === this.queue ? [] : this.queue.slice(MAX_BATCH);
    const args: ScriptArgument[] = [
      this.keys.presenceThisNode,
      this.keys.presenceCount,
      this.keys.presenceOnline,
      this.keys.nodes,
      this.keys.presenceVersion,
      this.nodeId,
      this.keys.broadcastChannel,
      this.queuesChecked ? this.keys.queue("") : "",
    ];
    for (const queued of calls) args.push(queued.call);
    this.inFlight++;
    runScript(this.client, PRESENCE_BATCH, args)
      .then((reply) => numbers(reply, "presence batch"))
      .then(
        (withQueue) => this.settle(calls, undefined, withQueue),
        (error: unknown) => this.settle(calls, error ?? new Error("presence batch failed"), []),
      );
  }

  /** `withQueue`: the positions (1-based) of the connects whose user's queue exists. */
  private settle(calls: readonly QueuedCall[], error: unknown, withQueue: number[]): void {
    this.inFlight--;
    if (error === undefined) {
      let next = 0;
      for (const [i, queued] of calls.entries()) {
        const hasQueue = withQueue[next] === i + 1;
        if (hasQueue) next++;
        queued.resolve(hasQueue || !this.queuesChecked ? MAY_HOLD_MESSAGES : QUEUE_EMPTY);
      }
    } else for (const queued of calls) queued.reject(error);
    if (this.queue.length > 0 && !this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flushSoon);
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
    this.sendQueued();
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
    this.sendQueued();
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
