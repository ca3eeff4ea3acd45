import { encodeGroupMessage, type GroupEvent, groupReceiptFrame } from "@mrezhen/protocol";
import {
  type ConversationSummary,
  type GroupAppendInput,
  type GroupAppendResult,
  type GroupChange,
  type GroupLimits,
  GroupRefusedError,
  type GroupState,
  type GroupStore,
  type HistoryPage,
  IDEMPOTENCY_TTL_MS,
  type RateRefusal,
  type RetentionOptions,
} from "../ports.js";
import type { MemoryBroker } from "./broker.js";
import type { Conversation, MemoryMessageStore } from "./messages.js";
import type { MemoryPresenceStore } from "./presence.js";
import type { MemoryRateLimiter } from "./rate-limiter.js";

/** Columns of a group log (Conversation.messages of a group). */
const STORED_AT = 0;
/** The sender's number (MemoryGroupStore.userNumber), for unread counts. */
const FROM_USER = 1;
/** 1 for a membership event (not counted as unread). */
const IS_EVENT = 2;

interface MemoryGroup {
  readonly log: Conversation;
  name: string;
  readonly createdBy: string;
  readonly createdAt: string;
  readonly admins: string[];
  /** Member → the seq of the event that made it a member. Insertion order is join order. */
  readonly members: Map<string, number>;
  /** Former member → the seq of its removal (or leave): it reads history up to it. */
  readonly former: Map<string, number>;
  /** Member → read watermark (a seq). */
  readonly readMarks: Map<string, number>;
  /** Member → messages from others above its read watermark. */
  readonly unread: Map<string, number>;
}

/**
 * Groups of the memory engine. A group's log is a conversation log of the message store (so
 * inbox entries, replay, queues and retention are the direct messages' own), and every entry is
 * added to each member's inbox in the same synchronous step that numbers it: membership and
 * order are decided together, which is what makes a removal race impossible here.
 */
export class MemoryGroupStore implements GroupStore {
  private readonly groups = new Map<string, MemoryGroup>();
  /** User → the groups it is a member of. */
  private readonly groupsByUser = new Map<string, Set<string>>();
  private readonly userNumbers = new Map<string, number>();
  private readonly idempotency = new Map<
    string,
    { result: GroupAppendResult; expiresAt: number }
  >();

  constructor(
    private readonly messages: MemoryMessageStore,
    private readonly broker: MemoryBroker,
    private readonly presence: MemoryPresenceStore,
    private readonly rateLimiter: MemoryRateLimiter,
    private readonly limits: GroupLimits,
    private readonly retention: RetentionOptions,
    private readonly now: () => number,
  ) {
    messages.groups = this;
  }

  async create(input: {
    groupId: string;
    name: string;
    createdBy: string;
    members: readonly string[];
    eventId: string;
    timestamp: string;
  }): Promise<GroupChange> {
    if (this.groups.has(input.groupId))
      throw new GroupRefusedError("forbidden", "A group with this id exists.");
    const members = [...new Set([input.createdBy, ...input.members])];
    if (members.length > this.limits.maxMembers) {
      throw new GroupRefusedError(
        "group_full",
        `A group has at most ${this.limits.maxMembers} members.`,
      );
    }
    for (const member of members) this.checkRoomFor(member);
    const group: MemoryGroup = {
      log: this.messages.groupLog(input.groupId),
      name: input.name,
      createdBy: input.createdBy,
      createdAt: input.timestamp,
      admins: [input.createdBy],
      members: new Map(),
      former: new Map(),
      readMarks: new Map(),
      unread: new Map(),
    };
    this.groups.set(input.groupId, group);
    for (const member of members) {
      group.members.set(member, 1);
      this.userGroups(member).add(input.groupId);
    }
    const event: GroupEvent = { kind: "created", name: input.name, members };
    const { seq, position } = this.appendEvent(group, input.createdBy, event, input);
    return { group: stateOf(input.groupId, group), seq, position };
  }

  async change(input: {
    groupId: string;
    actor: string;
    kind: "add" | "remove" | "leave" | "rename";
    userId?: string;
    name?: string;
    eventId: string;
    timestamp: string;
  }): Promise<GroupChange> {
    const group = this.memberGroup(input.actor, input.groupId);
    const unchanged = (): GroupChange => ({
      group: stateOf(input.groupId, group),
      seq: 0,
      position: 0,
    });
    let event: GroupEvent;
    switch (input.kind) {
      case "add": {
        const userId = input.userId as string;
        this.requireAdmin(group, input.actor);
        if (group.members.has(userId)) return unchanged();
        if (group.members.size >= this.limits.maxMembers) {
          throw new GroupRefusedError(
            "group_full",
            `The group has ${this.limits.maxMembers} members, its limit.`,
          );
        }
        this.checkRoomFor(userId);
        event = { kind: "joined", userId };
        // A member from the event on: it gets its own join, and everything after.
        group.members.set(userId, group.log.lastSeq + 1);
        group.former.delete(userId);
        this.userGroups(userId).add(input.groupId);
        break;
      }
      case "remove":
      case "leave": {
        const userId = input.kind === "leave" ? input.actor : (input.userId as string);
        if (input.kind === "remove") this.requireAdmin(group, input.actor);
        if (!group.members.has(userId)) return unchanged();
        event = { kind: input.kind === "leave" ? "left" : "removed", userId };
        // The removed member still gets the event of its removal (appendEvent sends it to the
        // members before and the user itself), then nothing.
        const { seq, position } = this.appendEvent(group, input.actor, event, input, userId);
        group.members.delete(userId);
        group.former.set(userId, seq);
        group.readMarks.delete(userId);
        group.unread.delete(userId);
        const admin = group.admins.indexOf(userId);
        if (admin >= 0) group.admins.splice(admin, 1);
        this.groupsByUser.get(userId)?.delete(input.groupId);
        return { group: stateOf(input.groupId, group), seq, position };
      }
      case "rename":
        group.name = input.name as string;
        event = { kind: "renamed", name: group.name };
        break;
    }
    const { seq, position } = this.appendEvent(group, input.actor, event, input);
    return { group: stateOf(input.groupId, group), seq, position };
  }

  async get(userId: string, groupId: string): Promise<GroupState> {
    return stateOf(groupId, this.memberGroup(userId, groupId));
  }

  async groupsOf(userId: string, limit: number): Promise<GroupState[]> {
    const states: GroupState[] = [];
    for (const groupId of this.groupsByUser.get(userId) ?? []) {
      if (states.length >= limit) break;
      states.push(stateOf(groupId, this.groups.get(groupId) as MemoryGroup));
    }
    return states;
  }

  async append(input: GroupAppendInput): Promise<GroupAppendResult | RateRefusal> {
    const key =
      input.clientMsgId === undefined
        ? undefined
        : `${input.groupId.length}:${input.groupId}${input.from.length}:${input.from}${input.clientMsgId}`;
    if (key !== undefined) {
      const earlier = this.idempotency.get(key);
      if (earlier !== undefined && earlier.expiresAt > this.now())
        return { ...earlier.result, duplicate: true };
    }
    const group = this.memberGroup(input.from, input.groupId);
    const decision = this.rateLimiter.decide(input.from);
    if (!decision.allowed)
      return { refused: true, retryAfterMs: decision.retryAfterMs, limit: "rate" };
    const { log } = group;
    const seq = log.lastSeq + 1;
    const json = encodeGroupMessage({
      id: input.id,
      groupId: input.groupId,
      from: input.from,
      content: input.content,
      timestamp: input.timestamp,
      seq,
      ...(input.clientMsgId === undefined ? {} : { clientMsgId: input.clientMsgId }),
    });
    const { senderPosition, anyOnline } = this.store(group, input.id, json, input.from, false, {
      senderConnId: input.senderConnId,
    });
    for (const member of group.members.keys())
      if (member !== input.from) group.unread.set(member, (group.unread.get(member) ?? 0) + 1);
    const result: GroupAppendResult = {
      messageId: input.id,
      timestamp: input.timestamp,
      duplicate: false,
      seq,
      status: anyOnline ? "delivered" : "queued",
      senderPosition,
    };
    if (key !== undefined)
      this.idempotency.set(key, { result, expiresAt: this.now() + IDEMPOTENCY_TTL_MS });
    return result;
  }

  async history(
    userId: string,
    groupId: string,
    limit: number,
    before?: number,
  ): Promise<HistoryPage> {
    const group = this.groups.get(groupId);
    if (group === undefined) throw notFound();
    // A former member reads up to (and including) its removal, nothing after it.
    const removedAt = group.former.get(userId);
    if (!group.members.has(userId) && removedAt === undefined) throw forbidden();
    const ceiling = removedAt === undefined ? Number.POSITIVE_INFINITY : removedAt + 1;
    const end = Math.min(before ?? Number.POSITIVE_INFINITY, ceiling);
    const { messages, lastSeq } = group.log;
    const firstSeq = lastSeq - messages.length + 1;
    const stop = end === Number.POSITIVE_INFINITY ? messages.length : end - firstSeq;
    const endIndex = Math.max(0, Math.min(messages.length, stop));
    const start = Math.max(0, endIndex - limit);
    const texts: string[] = [];
    for (let index = start; index < endIndex; index++) texts.push(messages.text(index));
    return { messages: texts, hasMore: start > 0 };
  }

  async markRead(userId: string, groupId: string, upTo: number): Promise<void> {
    const group = this.memberGroup(userId, groupId);
    const { messages, lastSeq } = group.log;
    const readUpTo = Math.min(upTo, lastSeq);
    if (readUpTo <= (group.readMarks.get(userId) ?? 0)) return;
    group.readMarks.set(userId, readUpTo);
    const me = this.userNumber(userId);
    const firstSeq = lastSeq - messages.length + 1;
    let unread = 0;
    for (let seq = lastSeq; seq > readUpTo && seq >= firstSeq; seq--) {
      const row = seq - firstSeq;
      if (messages.get(row, IS_EVENT) === 0 && messages.get(row, FROM_USER) !== me) unread++;
    }
    group.unread.set(userId, unread);
    // Per-member receipts only in small groups: in a group of n, everyone reading costs n²
    // frames; larger groups answer get_read_by instead.
    if (group.members.size > this.limits.receiptsMaxMembers) return;
    const frame = groupReceiptFrame(groupId, userId, readUpTo);
    for (const member of group.members.keys())
      if (member !== userId)
        this.messages.storeReceipt(member, `read|g${groupId}|${userId}`, frame);
  }

  async readBy(
    userId: string,
    groupId: string,
    seq: number,
  ): Promise<{ count: number; members: number }> {
    const group = this.memberGroup(userId, groupId);
    const { messages, lastSeq } = group.log;
    const row = seq - (lastSeq - messages.length + 1);
    const sender = row >= 0 && row < messages.length ? messages.get(row, FROM_USER) : -1;
    let count = 0;
    let members = 0;
    for (const member of group.members.keys()) {
      if (this.userNumbers.get(member) === sender) continue;
      members++;
      if ((group.readMarks.get(member) ?? 0) >= seq) count++;
    }
    return { count, members };
  }

  async publishToMembers(userId: string, groupId: string, frame: string): Promise<void> {
    const group = this.memberGroup(userId, groupId);
    for (const member of group.members.keys())
      if (member !== userId) this.broker.publish(member, { kind: "frame", frame });
  }

  /** conversations()'s group side: the user's groups with an entry, most recent first. */
  summaries(userId: string, limit: number): ConversationSummary[] {
    const summaries: ConversationSummary[] = [];
    for (const groupId of this.groupsByUser.get(userId) ?? []) {
      const group = this.groups.get(groupId) as MemoryGroup;
      const { messages } = group.log;
      if (messages.length === 0) continue;
      summaries.push({
        with: groupId,
        group: { name: group.name },
        lastMessageJson: messages.text(messages.length - 1),
        unread: group.unread.get(userId) ?? 0,
      });
    }
    // O(groups of the user), bounded by maxGroupsPerUser.
    summaries.sort((a, b) => (lastAt(b) > lastAt(a) ? 1 : lastAt(b) < lastAt(a) ? -1 : 0));
    return summaries.slice(0, limit);
  }

  /** Drops what retention no longer keeps (the message store sweeps inboxes and queues). */
  sweep(): void {
    const now = this.now();
    const horizon = now - this.retention.messageTtlMs;
    for (const group of this.groups.values())
      group.log.messages.dropWhile((log) => log.get(0, STORED_AT) <= horizon);
    for (const [key, entry] of this.idempotency)
      if (entry.expiresAt <= now) this.idempotency.delete(key);
  }

  private appendEvent(
    group: MemoryGroup,
    actor: string,
    event: GroupEvent,
    input: { groupId: string; eventId: string; timestamp: string },
    alsoTo?: string,
  ): { seq: number; position: number } {
    const seq = group.log.lastSeq + 1;
    const json = encodeGroupMessage({
      id: input.eventId,
      groupId: input.groupId,
      from: actor,
      event,
      timestamp: input.timestamp,
      seq,
    });
    const { senderPosition } = this.store(group, input.eventId, json, actor, true, { alsoTo });
    return { seq, position: senderPosition };
  }

  /**
   * Appends an entry to the group's log and to the inbox of every member (queued for those
   * offline, published to those online): the one step that numbers it and decides who gets it.
   * The sender's connection that sent a message gets an ack instead of a copy.
   */
  private store(
    group: MemoryGroup,
    id: string,
    json: string,
    from: string,
    isEvent: boolean,
    options: { senderConnId?: string; alsoTo?: string | undefined },
  ): { senderPosition: number; anyOnline: boolean } {
    const { log } = group;
    const now = this.now();
    const seq = ++log.lastSeq;
    const row = log.messages.pushTexts(id, json);
    log.messages.set(row, STORED_AT, now);
    log.messages.set(row, FROM_USER, this.userNumber(from));
    log.messages.set(row, IS_EVENT, isEvent ? 1 : 0);
    const groupId = log.groupId as string;
    let senderPosition = 0;
    let anyOnline = false;
    const recipients: Iterable<string> =
      options.alsoTo === undefined || group.members.has(options.alsoTo)
        ? group.members.keys()
        : [...group.members.keys(), options.alsoTo];
    for (const member of recipients) {
      const position = this.messages.addToInbox(member, log, seq, now);
      if (member === from) senderPosition = position;
      if (!this.presence.isOnline(member)) {
        if (member !== from) this.messages.enqueue(member, position);
        continue;
      }
      if (member !== from) anyOnline = true;
      // The sending connection gets an ack: a copy only for the sender's other connections.
      else if (options.senderConnId !== undefined && this.presence.connectionCount(member) < 2)
        continue;
      this.broker.publish(member, {
        kind: "message",
        messageId: id,
        messageJson: json,
        position,
        groupId,
        ...(member === from && options.senderConnId !== undefined
          ? { excludeConnId: options.senderConnId }
          : {}),
      });
    }
    return { senderPosition, anyOnline };
  }

  private memberGroup(userId: string, groupId: string): MemoryGroup {
    const group = this.groups.get(groupId);
    if (group === undefined) throw notFound();
    if (!group.members.has(userId)) throw forbidden();
    return group;
  }

  private requireAdmin(group: MemoryGroup, userId: string): void {
    if (!group.admins.includes(userId))
      throw new GroupRefusedError(
        "forbidden",
        "Only the group's admins may add or remove members.",
      );
  }

  private checkRoomFor(userId: string): void {
    if ((this.groupsByUser.get(userId)?.size ?? 0) >= this.limits.maxGroupsPerUser) {
      throw new GroupRefusedError(
        "too_many_groups",
        `${JSON.stringify(userId)} is in ${this.limits.maxGroupsPerUser} groups, the limit.`,
      );
    }
  }

  private userGroups(userId: string): Set<string> {
    let groups = this.groupsByUser.get(userId);
    if (groups === undefined) {
      groups = new Set();
      this.groupsByUser.set(userId, groups);
    }
    return groups;
  }

  private userNumber(userId: string): number {
    let number = this.userNumbers.get(userId);
    if (number === undefined) {
      number = this.userNumbers.size + 1;
      this.userNumbers.set(userId, number);
    }
    return number;
  }
}

function stateOf(groupId: string, group: MemoryGroup): GroupState {
  return {
    groupId,
    name: group.name,
    members: [...group.members.keys()],
    admins: [...group.admins],
    createdBy: group.createdBy,
    createdAt: group.createdAt,
  };
}

function lastAt(summary: ConversationSummary): string {
  const json = summary.lastMessageJson;
  const at = json.indexOf('"timestamp":"');
  return json.slice(at + 13, at + 37);
}

export function notFound(): GroupRefusedError {
  return new GroupRefusedError("not_found", "There is no such group.");
}

export function forbidden(): GroupRefusedError {
  return new GroupRefusedError("forbidden", "You are not a member of this group.");
}
