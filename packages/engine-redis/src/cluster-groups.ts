/**
 * The members' side of group entries on Redis Cluster (REDIS_CLUSTER_NODES). A group's keys are
 * one slot (`{g:<groupId>}`), each member's another (`{u:<member>}`), and a script may only touch
 * one slot; so an entry (a message or a membership change) is written in steps, as a direct
 * message is (cluster-messages.ts):
 *
 * 1. the group's step (groups.ts, the standalone scripts in their cluster mode): checks the
 *    sender or actor, numbers the entry, stores its text and log entry, the unread counts and
 *    the idempotency record, and answers the entry with its recipients (the members at that
 *    seq) and the seq of each one's join. Membership is decided there, atomically with the seq:
 *    a message racing a removal is before it or after it.
 * 2. one step per recipient, in its slot, all at once (GROUP_MEMBER_STEP, cluster-scripts.ts):
 *    inbox position, the member's text copy, inbox entry, publish or queue. The member's cursor
 *    for the group makes it idempotent and keeps each member's stream in seq order: an entry
 *    goes in only right after its predecessor; a step that finds a gap (a concurrent sender's
 *    entry not there yet) fills it from the group's log first (GROUP_LOG_RANGE).
 *
 * The sender is acked after every step. A step that did not run (a node died, a failover) is
 * done by the retry (same clientMsgId: the group's step answers the original entry and the steps
 * run again), or, without a retry, by the next entry of the group that reaches that member (its
 * gap fill). Before the group's step, a message costs one more script in the sender's slot, its
 * rate limit (CONSUME; the window is the sender's, shared with direct messages).
 */
import type { RateRefusal } from "@mrezhen/engine";
import type { AppendStep } from "./cluster-messages.js";
import {
  GROUP_COUNT_CHECK,
  GROUP_LOG_RANGE,
  GROUP_MEMBER_STEP,
  RECEIPT,
} from "./cluster-scripts.js";
import type { Keys } from "./keys.js";
import { unexpected } from "./messages.js";
import { type RedisClient, runScript, strings, toEngineError } from "./script-runner.js";
import { CONSUME } from "./scripts.js";

/** An entry as the group's step answers it: its text and each recipient with its join seq. */
export interface StoredEntry {
  readonly seq: number;
  readonly id: string;
  readonly json: string;
  readonly recipients: readonly (readonly [member: string, joinSeq: number])[];
}

/** What the members' steps of an entry did, for the ack. */
export interface Delivery {
  /** The actor's (sender's) inbox position of the entry, 0 if it is not a recipient. */
  readonly actorPosition: number;
  /** Some other member's node got it live (a step that found it done already cannot tell). */
  readonly delivered: boolean;
}

/** Gap fills read the group's log in pages of this many seqs. */
const GAP_PAGE = 1000;

interface LogEntry {
  readonly seq: number;
  readonly id: string;
  readonly json: string;
}

export class ClusterGroupSteps {
  /** Test-only: called after the group's step of an entry; throwing there interrupts it. */
  faultForTests: ((step: AppendStep) => void) | undefined;

  constructor(
    private readonly client: RedisClient,
    private readonly keys: Keys,
    private readonly retention: { readonly messageTtlMs: number; readonly maxEntries: number },
    private readonly rateLimit: { readonly limit: number; readonly windowMs: number },
    private readonly markerTtlMs: number,
  ) {}

  /** The sender's rate window (its slot), before the group's step; undefined when allowed. */
  async consumeRate(from: string): Promise<RateRefusal | undefined> {
    const reply = await runScript(this.client, CONSUME, [
      this.keys.rate(from),
      this.rateLimit.limit,
      this.rateLimit.windowMs,
    ]);
    if (!Array.isArray(reply) || typeof reply[1] !== "number") unexpected("consume", reply);
    return reply[0] === 1 ? undefined : { refused: true, retryAfterMs: reply[1], limit: "rate" };
  }

  /** The first of `users` who may not join one more group (each checked in its slot), if any. */
  async overGroupLimit(
    groupId: string,
    users: readonly string[],
    maxGroups: number,
  ): Promise<string | undefined> {
    const allowed = await Promise.all(
      users.map((user) =>
        runScript(this.client, GROUP_COUNT_CHECK, [this.keys.userGroups(user), groupId, maxGroups]),
      ),
    );
    const index = allowed.indexOf(0);
    return index < 0 ? undefined : users[index];
  }

  /**
   * The user's connections on all nodes (HGET in the presence slot): whether the sender of a
   * message has connections other than the sending one, which get a copy. Read beside the
   * group's step (no extra round trip); a connection opened meanwhile reads its inbox.
   */
  async connections(userId: string): Promise<number> {
    try {
      return Number((await this.client.hget(this.keys.presenceCount, userId)) ?? "0");
    } catch (error) {
      throw toEngineError(error);
    }
  }

  /**
   * Runs every recipient's step of `entry` (together); resolves once all are done. The actor's
   * own entry is published to its connections (but `excludeConnId`) unless `actorCopy` is false.
   */
  async deliver(
    groupId: string,
    entry: StoredEntry,
    actor: string,
    excludeConnId: string,
    actorCopy: boolean,
  ): Promise<Delivery> {
    this.faultForTests?.("group");
    const flags = entryFlags(entry.json);
    const results = await Promise.all(
      entry.recipients.map(([member, joinSeq]) =>
        member === actor
          ? this.memberStep(
              groupId,
              member,
              joinSeq,
              entry,
              flags(member) + (actorCopy ? "" : "n"),
              excludeConnId,
            )
          : this.memberStep(groupId, member, joinSeq, entry, flags(member), ""),
      ),
    );
    let actorPosition = 0;
    let delivered = false;
    entry.recipients.forEach(([member], i) => {
      const result = results[i] as { position: number; delivered: boolean };
      if (member === actor) actorPosition = result.position;
      else delivered ||= result.delivered;
    });
    return { actorPosition, delivered };
  }

  /**
   * One member's step of `target`: alone when the member's cursor is right before it, else with
   * the entries of the gap, read from the group's log, a page at a time.
   */
  private async memberStep(
    groupId: string,
    member: string,
    joinSeq: number,
    target: LogEntry,
    targetFlags: string,
    excludeConnId: string,
  ): Promise<{ position: number; delivered: boolean }> {
    const targetArguments = [
      String(target.seq),
      target.id,
      target.json,
      excludeConnId,
      targetFlags,
    ];
    // The step covers the entries with a seq in [from, to]: first the target alone.
    let from = target.seq;
    let to = target.seq;
    let entries = targetArguments;
    let delivered = false;
    for (;;) {
      const reply = await runScript(
        this.client,
        GROUP_MEMBER_STEP,
        [
          this.keys.inboxPosition(member),
          this.keys.inboxLog(member),
          this.keys.queue(member),
          this.keys.groupCursor(member),
          this.keys.userGroups(member),
          groupId,
          joinSeq,
          from,
          to,
          this.retention.messageTtlMs,
          this.retention.maxEntries,
          this.keys.textHeadOfUser(member),
          this.keys.userChannel(member),
          this.keys.doneOut(member, ""),
          this.markerTtlMs,
          ...entries,
        ],
        true,
      );
      if (!Array.isArray(reply) || typeof reply[0] !== "number" || typeof reply[1] !== "number") {
        unexpected("group member step", reply);
      }
      delivered ||= reply[2] === 1;
      const done = reply[0] !== -1;
      if (done && to === target.seq) return { position: reply[1], delivered };
      // Next, a page of the log: after the member's cursor (a gap), or after the page just done.
      from = done ? to + 1 : reply[1] + 1;
      to = Math.min(target.seq - 1, from - 1 + GAP_PAGE);
      const page = to >= from ? await this.logRange(groupId, from - 1, to) : [];
      entries = page.flatMap((e) => [String(e.seq), e.id, e.json, "", entryFlags(e.json)(member)]);
      if (to === target.seq - 1) {
        // The last page: the target follows it in the same step.
        to = target.seq;
        entries.push(...targetArguments);
      }
    }
  }

  /** The group's live log entries with a seq in (after, upTo]. */
  private async logRange(groupId: string, after: number, upTo: number): Promise<LogEntry[]> {
    const flat = strings(
      await runScript(this.client, GROUP_LOG_RANGE, [
        this.keys.group("group-log", groupId),
        after,
        upTo,
        this.keys.textHeadOfGroup(groupId),
      ]),
      "group log range",
    );
    const entries: LogEntry[] = [];
    for (let i = 0; i + 2 < flat.length; i += 3) {
      entries.push({
        seq: Number(flat[i]),
        id: flat[i + 1] as string,
        json: flat[i + 2] as string,
      });
    }
    return entries;
  }

  /** A read receipt of `reader` to each of `members`, in their slots. */
  async readReceipts(
    members: readonly string[],
    groupId: string,
    reader: string,
    frame: string,
  ): Promise<void> {
    await Promise.all(
      members.map((member) =>
        runScript(this.client, RECEIPT, [
          this.keys.receipts(member),
          `read|g${groupId}|${reader}`,
          frame,
          this.keys.userChannel(member),
        ]),
      ),
    );
  }
}

/**
 * The flags of a stored entry for a member (GROUP_MEMBER_STEP): `o` its own (the sender or the
 * actor), `+` its `created` or `joined` event, `-` its `removed` or `left` event.
 */
function entryFlags(json: string): (member: string) => string {
  const { from, event } = JSON.parse(json) as {
    from: string;
    event?: { kind: string; userId?: string; members?: string[] };
  };
  return (member) => {
    let flags = member === from ? "o" : "";
    if (event?.kind === "created" || (event?.kind === "joined" && event.userId === member)) {
      flags += "+";
    } else if ((event?.kind === "removed" || event?.kind === "left") && event.userId === member) {
      flags += "-";
    }
    return flags;
  };
}
