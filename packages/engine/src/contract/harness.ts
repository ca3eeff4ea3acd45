import { randomUUID } from "node:crypto";
import type {
  AppendInput,
  BrokerHandler,
  Engine,
  GroupAppendInput,
  GroupLimits,
  MessageEvent,
  MessageStore,
  PresenceChange,
  QueuedMessage,
  QuotaOptions,
  RateLimitOptions,
  RetentionOptions,
  UserEvent,
} from "../ports.js";

/** A backend under test: one or more nodes' engines sharing its state, isolated from other tests. */
export interface ContractBackend {
  /** The engine of one more node. The memory backend has a single node and returns it again. */
  node(): Promise<Engine>;
  /** How many distinct nodes node() can give (1 for memory). */
  readonly maxNodes: number;
  /** Closes every engine it made and removes what the test wrote. */
  close(): Promise<void>;
}

export interface BackendOptions {
  readonly rateLimit: RateLimitOptions;
  /** When absent, the engine's defaults. */
  readonly retention?: RetentionOptions;
  /** When absent, the engine's defaults (none). */
  readonly quotas?: QuotaOptions;
  /** When absent, the engine's defaults. */
  readonly groups?: GroupLimits;
}

/** Makes a fresh, isolated backend (e.g. a new key prefix on a shared Redis). */
export type BackendFactory = (options: BackendOptions) => Promise<ContractBackend>;

/** A broker handler that records what reaches one node. */
export class Recorder implements BrokerHandler {
  readonly events: { userId: string; event: UserEvent }[] = [];
  /** Presence changes, with the online list as it stood at each (sorted). */
  readonly changes: { userId: string; status: string; onlineUsers: string[] }[] = [];

  onUserEvent(userId: string, event: UserEvent): void {
    this.events.push({ userId, event });
  }

  onPresence(change: PresenceChange): void {
    this.changes.push({
      userId: change.userId,
      status: change.status,
      onlineUsers: [...change.online].sort(),
    });
  }

  /** Message events for `userId` (frame events are in {@link framesFor}). */
  eventsFor(userId: string): MessageEvent[] {
    const events: MessageEvent[] = [];
    for (const entry of this.events)
      if (entry.userId === userId && entry.event.kind === "message") events.push(entry.event);
    return events;
  }

  /** Decoded frame events (receipts, typing) for `userId`. */
  framesFor(userId: string): Record<string, unknown>[] {
    const frames: Record<string, unknown>[] = [];
    for (const entry of this.events) {
      if (entry.userId === userId && entry.event.kind === "frame")
        frames.push(JSON.parse(entry.event.frame));
    }
    return frames;
  }

  presence(): { userId: string; status: string; onlineUsers: string[] }[] {
    return this.changes;
  }
}

/** Polls `check` until it stops throwing, or rethrows its last error after `timeoutMs`. */
export async function eventually(check: () => void, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      check();
      return;
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await sleep(10);
    }
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Time given to asynchronous backends to show an event that must NOT arrive. */
export const QUIET_MS = 150;

/**
 * An append of `content` from `from` to `to`, with a fresh id and the current time. The sending
 * connection defaults to `<from>-conn`.
 */
export function appendInput(
  from: string,
  to: string,
  content = "hello",
  options: { readonly clientMsgId?: string; readonly senderConnId?: string } = {},
): AppendInput {
  return {
    id: randomUUID(),
    from,
    to,
    content,
    timestamp: new Date().toISOString(),
    senderConnId: options.senderConnId ?? `${from}-conn`,
    ...(options.clientMsgId === undefined ? {} : { clientMsgId: options.clientMsgId }),
  };
}

/** Reads a user's whole offline queue and removes it, as a flush that was confirmed does. */
export async function takeAllQueued(
  messages: MessageStore,
  userId: string,
): Promise<QueuedMessage[]> {
  const queued = await messages.readQueued(userId, 0, Number.MAX_SAFE_INTEGER);
  const last = queued.at(-1);
  if (last !== undefined) await messages.removeQueued(userId, last.position);
  return queued;
}

/**
 * A group message of `content` from `from`, with a fresh id and the current time. The sending
 * connection defaults to `<from>-conn`.
 */
export function groupInput(
  groupId: string,
  from: string,
  content: string,
  options: { clientMsgId?: string; senderConnId?: string } = {},
): GroupAppendInput {
  return {
    id: randomUUID(),
    groupId,
    from,
    content,
    timestamp: new Date().toISOString(),
    senderConnId: options.senderConnId ?? `${from}-conn`,
    ...(options.clientMsgId === undefined ? {} : { clientMsgId: options.clientMsgId }),
  };
}

/** A short label of a group log entry: its content, or its event (`joined:dave`, `renamed`). */
export function entryLabel(json: string): string {
  const entry = JSON.parse(json) as { content?: string; event?: { kind: string; userId?: string } };
  if (entry.event === undefined) return entry.content as string;
  return `${entry.event.kind}${entry.event.userId === undefined ? "" : `:${entry.event.userId}`}`;
}

/** A user's stream of a group (its inbox entries of the group, in order), as entry labels. */
export async function groupInboxLabels(
  engine: Engine,
  userId: string,
  groupId: string,
): Promise<string[]> {
  const page = await engine.messages.readInbox(userId, 0, 10_000);
  return page.entries.filter((e) => e.groupId === groupId).map((e) => entryLabel(e.messageJson));
}
