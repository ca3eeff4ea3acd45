/**
 * EventQueue on a Redis Stream with a consumer group, so that events survive the node that
 * queued them and the node that was delivering them:
 * - publish: XADD by the node where the event happened (one command; a presence event goes
 *   through QUEUE_PRESENCE_EVENT so that one node of all that saw the change queues it);
 * - take: XAUTOCLAIM first (entries another node's worker held unacknowledged for longer than
 *   the claim timeout: that node died), then XREADGROUP `>` for new entries, blocking on a
 *   connection of its own (a blocked command would hold up every command behind it on the
 *   engine's command connection);
 * - keep: XCLAIM ... JUSTID to itself, which resets an entry's idle time: a live worker waiting
 *   to retry an entry keeps it from being taken over;
 * - acknowledge: XACK and XDEL in one MULTI, so the stream holds only what is not delivered yet
 *   and its length is the queue's depth.
 * The consumer is the node id: a node restarted with the same NODE_ID finds its own pending
 * entries again once they are idle for the claim timeout.
 */
import type { EventQueue, EventQueueStats, QueuedEvent } from "@mrezhen/engine";
import { Cluster } from "ioredis";
import type { BackendKeys } from "./backend-keys.js";
import { QUEUE_PRESENCE_EVENT } from "./backend-scripts.js";
import { type RedisClient, runScript, toEngineError } from "./script-runner.js";

export class RedisEventQueue implements EventQueue {
  private blocking: RedisClient | undefined;
  private groupReady = false;
  /** Where the XAUTOCLAIM scan stands ("0-0": from the start). */
  private claimCursor = "0-0";
  private closed = false;

  constructor(
    private readonly client: RedisClient,
    private readonly keys: BackendKeys,
    private readonly consumer: string,
  ) {}

  async publish(payload: string, presenceVersion?: number): Promise<void> {
    if (presenceVersion !== undefined) {
      await runScript(this.client, QUEUE_PRESENCE_EVENT, [
        this.keys.events,
        this.keys.presenceVersionQueued,
        presenceVersion,
        payload,
      ]);
      return;
    }
    try {
      await this.client.xadd(this.keys.events, "*", "e", payload);
    } catch (error) {
      throw toEngineError(error);
    }
  }

  async take(count: number, waitMs: number, claimIdleMs: number): Promise<QueuedEvent[]> {
    try {
      await this.ensureGroup();
      const taken = await this.claimStale(count, claimIdleMs);
      if (taken.length >= count) return taken;
      const reader = await this.reader();
      const args: (string | number)[] = ["GROUP", this.keys.group, this.consumer];
      args.push("COUNT", count - taken.length);
      // Block only when there is nothing to do meanwhile.
      if (taken.length === 0 && waitMs > 0) args.push("BLOCK", waitMs);
      args.push("STREAMS", this.keys.events, ">");
      const reply = (await reader.call("XREADGROUP", ...args)) as unknown[] | null;
      for (const [id, fields] of streamEntries(reply)) {
        const event = toEvent(id, fields, false);
        if (event !== undefined) taken.push(event);
      }
      return taken;
    } catch (error) {
      if (error instanceof Error && error.message.startsWith("NOGROUP")) {
        // Redis lost the group (a restart without persistence): made again next time.
        this.groupReady = false;
      }
      throw toEngineError(error);
    }
  }

  async keep(entryIds: readonly string[]): Promise<void> {
    if (entryIds.length === 0) return;
    try {
      await this.client.call(
        "XCLAIM",
        this.keys.events,
        this.keys.group,
        this.consumer,
        0,
        ...entryIds,
        "JUSTID",
      );
    } catch (error) {
      throw toEngineError(error);
    }
  }

  async acknowledge(entryIds: readonly string[]): Promise<void> {
    if (entryIds.length === 0) return;
    try {
      await this.client
        .multi()
        .xack(this.keys.events, this.keys.group, ...entryIds)
        .xdel(this.keys.events, ...entryIds)
        .exec();
    } catch (error) {
      throw toEngineError(error);
    }
  }

  async stats(): Promise<EventQueueStats> {
    try {
      const [depth, first] = await Promise.all([
        this.client.xlen(this.keys.events),
        this.client.xrange(this.keys.events, "-", "+", "COUNT", 1),
      ]);
      const oldest = first[0]?.[0];
      return {
        depth,
        oldestAgeMs: oldest === undefined ? 0 : Math.max(0, Date.now() - idTime(oldest)),
      };
    } catch (error) {
      throw toEngineError(error);
    }
  }

  /** Stops the blocking connection (engine close). */
  close(): void {
    this.closed = true;
    this.blocking?.disconnect();
    this.blocking = undefined;
  }

  private async ensureGroup(): Promise<void> {
    if (this.groupReady) return;
    try {
      // From the stream's start ("0"), not "$": events queued before any worker ran are kept.
      await this.client.xgroup("CREATE", this.keys.events, this.keys.group, "0", "MKSTREAM");
    } catch (error) {
      if (!(error instanceof Error && error.message.startsWith("BUSYGROUP"))) throw error;
    }
    this.groupReady = true;
  }

  private async claimStale(count: number, claimIdleMs: number): Promise<QueuedEvent[]> {
    const reply = (await this.client.call(
      "XAUTOCLAIM",
      this.keys.events,
      this.keys.group,
      this.consumer,
      claimIdleMs,
      this.claimCursor,
      "COUNT",
      count,
    )) as [string, ([string, string[]] | null)[], string[]?];
    this.claimCursor = reply[0];
    const taken: QueuedEvent[] = [];
    for (const entry of reply[1]) {
      if (entry === null) continue;
      const event = toEvent(entry[0], entry[1], true);
      if (event !== undefined) taken.push(event);
    }
    return taken;
  }

  private async reader(): Promise<RedisClient> {
    if (this.closed) throw new Error("event queue closed");
    if (this.blocking === undefined) {
      const name = `mrezhen:${this.consumer}:webhooks`.replace(/[^\w.:-]/g, "_");
      const { client } = this;
      // On Redis Cluster a client of its own too: it routes XREADGROUP to the stream's slot.
      this.blocking =
        client instanceof Cluster
          ? client.duplicate(undefined, { enableOfflineQueue: true })
          : client.duplicate({ connectionName: name, enableOfflineQueue: true });
      this.blocking.on("error", () => {}); // outages are reported by the engine's connections
    }
    if (this.blocking.status === "wait") await this.blocking.connect();
    return this.blocking;
  }
}

/**
 * The entries of an XREADGROUP reply for one stream: `[[stream, entries]]` in RESP2, which
 * ioredis 6 hands over as `[stream, entries]`; both shapes are read.
 */
function streamEntries(reply: unknown[] | null): [string, string[]][] {
  if (reply === null || reply.length === 0) return [];
  const first = reply[0];
  const entries = Array.isArray(first) ? first[1] : reply[1];
  return Array.isArray(entries) ? (entries as [string, string[]][]) : [];
}

function toEvent(entryId: string, fields: string[], claimed: boolean): QueuedEvent | undefined {
  const at = fields.indexOf("e");
  const payload = at >= 0 && at % 2 === 0 ? fields[at + 1] : undefined;
  if (payload === undefined) return undefined;
  return { entryId, payload, publishedAt: idTime(entryId), claimed };
}

/** The time part of a stream id (`<ms>-<seq>`): when the entry was added. */
function idTime(entryId: string): number {
  return Number(entryId.slice(0, entryId.indexOf("-")));
}
