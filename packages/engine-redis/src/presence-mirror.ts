/**
 * Each node's own copy of the online set, kept from the presence deltas of the broadcast channel.
 *
 * The presence scripts (scripts.ts) never send the online set: each change of it bumps the
 * `presence:version` counter and publishes one O(1) delta with the new version (codec.ts). Every
 * node applies the deltas, in version order, to its copy and hands each change to its handler
 * with the copy as it stands right after it (PresenceChange.online, a live view). All nodes
 * receive the same deltas in the same order (one script at a time publishes on one channel, and
 * a subscriber connection delivers a channel's messages in publish order), so every node
 * announces the same changes in the same order, each with the same set.
 *
 * The copy starts from a snapshot (SNAPSHOT: the version and the set, read atomically), taken
 * only once the broadcast subscription is confirmed, so that every change after the snapshot
 * reaches this node as a delta:
 * - deltas that arrive while no snapshot is installed (before the first one, or while a new one
 *   is being taken) are held, and applied after it when their version is above the snapshot's;
 * - a delta at or below the copy's version is already in it (it was published before the
 *   snapshot was read, and arrived after it) and is ignored;
 * - a delta more than one above the copy's version means deltas were lost (the subscriber's
 *   link dropped, or Redis dropped it for a full output buffer): the mirror takes a new snapshot,
 *   holding deltas meanwhile;
 * - version 1 while the copy is past it means the counter started again (Redis lost its data
 *   without the link dropping, e.g. FLUSHALL): a new snapshot too.
 * The engine also takes a new snapshot after every reconnect of the subscriber connection
 * (engine.ts), once its re-subscriptions are confirmed: deltas published while it was away are
 * lost, and there may be no later delta to reveal the gap.
 *
 * A new snapshot replaces the copy and its version (a restarted Redis counts from 0 again). The
 * users who went offline or came online meanwhile, as the difference between the old copy and
 * the new, are announced as changes (offline ones first), each with the copy as it stands after
 * it, so the node's clients still learn of them. Those changes are this node's own view of what
 * it missed; the other nodes, which missed nothing, announced the real ones. The first snapshot
 * announces nothing: the node had nobody to tell.
 *
 * Costs: a delta is O(1) to decode and apply; a snapshot is O(online users) and taken only at
 * start and after a loss.
 */
import type { PresenceChange } from "@mrezhen/engine";
import type { PresenceDelta } from "./codec.js";
import type { Logger } from "./engine.js";
import type { Keys } from "./keys.js";
import { type RedisClient, runScript } from "./script-runner.js";
import { SNAPSHOT } from "./scripts.js";

/** Deltas held while a snapshot is awaited, at most (the oldest go first; see hold()). */
const MAX_HELD = 100_000;

export class PresenceMirror {
  /** The online users as this node knows them: the live view handed to every change. */
  readonly online = new Set<string>();
  /** The version `online` stands at (that of the last snapshot or applied delta). */
  private version = 0;
  /** Whether `online` is at `version` with no delta missed since: deltas can be applied. */
  private current = false;
  /** Whether a snapshot was ever installed (the first one announces nothing). */
  private started = false;
  /** The snapshot loop under way, if any. */
  private syncing: Promise<void> | undefined;
  /** A snapshot is wanted: the loop under way takes one more after the current one. */
  private again = false;
  /**
   * The subscriber connection went down since the last resync() call: a snapshot under way may
   * have been read before the link dropped, so it must not make the copy current.
   */
  private linkDown = false;
  /** Deltas that arrived while not current, in arrival (= version) order. */
  private held: PresenceDelta[] = [];
  private snapshots = 0;

  constructor(
    private readonly client: RedisClient,
    private readonly keys: Keys,
    private readonly logger: Logger,
    /** Called for every change, in order; the engine's broker passes it to its handler. */
    private readonly announce: (change: PresenceChange) => void,
  ) {}

  /** Whether the mirror has a snapshot and has missed no delta since (as far as it knows). */
  get synced(): boolean {
    return this.current;
  }

  /** Whether a snapshot is being taken now. */
  get syncInProgress(): boolean {
    return this.syncing !== undefined;
  }

  /** Snapshots taken so far (the first included): for tests and logs. */
  get snapshotCount(): number {
    return this.snapshots;
  }

  /** A delta from the broadcast channel, in arrival order. */
  receive(delta: PresenceDelta): void {
    if (!this.current) {
      this.hold(delta);
    } else if (delta.version === this.version + 1) {
      this.apply(delta);
    } else if (delta.version > this.version) {
      this.hold(delta);
      this.lost("a presence delta was lost (version gap)", delta.version);
    } else if (delta.version === 1 && this.version > 1) {
      // Not an old delta arriving late: the counter itself started again.
      this.hold(delta);
      this.lost("the presence version went back to 1 (Redis lost its data)", delta.version);
    }
    // Else: already in the set, which was read after this delta was published.
  }

  /**
   * The subscriber connection went down: deltas will be lost until the engine resynchronises
   * (after the reconnect). Until then deltas are held rather than applied.
   */
  invalidate(): void {
    this.current = false;
    this.linkDown = true;
  }

  /**
   * Takes a snapshot and installs it, announcing the differences from the current copy (none
   * for the first). Call only while the broadcast subscription is confirmed. When a snapshot is
   * under way, another one follows it (the one under way may have been read too early) and
   * this resolves after that one. Rejects with EngineUnavailableError when Redis cannot answer:
   * the mirror then stays out of sync, holding deltas, until the next call.
   */
  resync(): Promise<void> {
    this.current = false;
    this.linkDown = false;
    this.again = true;
    this.syncing ??= this.snapshotLoop();
    return this.syncing;
  }

  private async snapshotLoop(): Promise<void> {
    try {
      while (this.again) {
        this.again = false;
        const reply = await runScript(this.client, SNAPSHOT, [
          this.keys.presenceVersion,
          this.keys.presenceOnline,
        ]);
        this.snapshots++;
        const [version, members] = parseSnapshot(reply);
        this.install(version, members);
      }
    } finally {
      // In the same step as the last check of `again`: a resync() after it starts a new loop.
      this.syncing = undefined;
    }
  }

  /** Replaces the copy by a snapshot, announcing the difference, then applies held deltas. */
  private install(version: number, members: string[]): void {
    const next = new Set(members);
    if (this.started) {
      const left: string[] = [];
      const came: string[] = [];
      for (const userId of this.online) if (!next.has(userId)) left.push(userId);
      for (const userId of next) if (!this.online.has(userId)) came.push(userId);
      if (left.length + came.length > 0) {
        this.logger.info(
          { offline: left.length, online: came.length },
          "presence resynchronised: announcing the changes this node missed",
        );
      }
      for (const userId of left) {
        this.online.delete(userId);
        this.emit(userId, "offline");
      }
      for (const userId of came) {
        this.online.add(userId);
        this.emit(userId, "online");
      }
    } else {
      for (const userId of next) this.online.add(userId);
      this.started = true;
    }
    this.version = version;
    // Deltas stay held while another snapshot is due: the loop's next one, or, after a link
    // loss, the one the reconnect takes. Applied meanwhile, some could be newer than that
    // snapshot, which would then seem to undo them.
    this.current = !this.linkDown && !this.again;
    const held = this.held;
    this.held = [];
    for (const delta of held) {
      if (!this.current) this.hold(delta);
      else if (delta.version > this.version) this.receive(delta);
    }
  }

  private apply(delta: PresenceDelta): void {
    this.version = delta.version;
    if (delta.status === "online") this.online.add(delta.userId);
    else this.online.delete(delta.userId);
    this.emit(delta.userId, delta.status, delta.version);
  }

  /** `version` only for a real delta: a change inferred from a new snapshot has none. */
  private emit(userId: string, status: "online" | "offline", version?: number): void {
    try {
      this.announce(
        version === undefined
          ? { userId, status, online: this.online }
          : { userId, status, online: this.online, version },
      );
    } catch (error) {
      this.logger.error({ err: error, userId }, "presence handler threw");
    }
  }

  /**
   * Keeps a delta for after the next snapshot. Past MAX_HELD the oldest half goes: the snapshot
   * is read after they arrived, so it holds their changes (and should it not, the first delta
   * after it shows a gap and another snapshot follows).
   */
  private hold(delta: PresenceDelta): void {
    if (this.held.length >= MAX_HELD) this.held.splice(0, MAX_HELD / 2);
    this.held.push(delta);
  }

  private lost(why: string, version: number): void {
    this.logger.warn(
      { mirrorVersion: this.version, deltaVersion: version },
      `${why}; taking a new presence snapshot`,
    );
    // Failures leave the mirror out of sync; the engine retries (heartbeat, reconnects).
    this.resync().catch(() => {});
  }
}

function parseSnapshot(reply: unknown): [number, string[]] {
  if (Array.isArray(reply) && reply.length === 2) {
    const [version, members] = reply as [unknown, unknown];
    const parsed = Number(version);
    if (
      typeof version === "string" &&
      Number.isSafeInteger(parsed) &&
      parsed >= 0 &&
      Array.isArray(members) &&
      members.every((member) => typeof member === "string")
    ) {
      return [parsed, members as string[]];
    }
  }
  throw new Error(`unexpected reply from the presence_snapshot script: ${JSON.stringify(reply)}`);
}
