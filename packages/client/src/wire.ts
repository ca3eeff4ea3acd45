/*
 * The server frames the SDK reads, as they are on the wire today. @mrezhen/protocol's ServerFrame
 * union predates acknowledged delivery (no `synced`, `receipt`, `typing`, `conversations`, and
 * `message_ack` without `position` and `clientMsgId`), and the token refresh frames are being
 * added there in parallel: until both land, the SDK names them here, built from the protocol's
 * own types. Type-only imports: nothing of the protocol package ships in the bundle.
 */
import type {
  ChatMessage,
  DeliveryStatus,
  ErrorCode,
  GroupEvent,
  GroupInfo,
  GroupMessage,
  LimitName,
  PresenceStatus,
  SendOutcome,
} from "@mrezhen/protocol";

export type { ChatMessage, DeliveryStatus, GroupEvent, GroupInfo, GroupMessage, PresenceStatus };

/** A stored message's acknowledgement: it is in history and in both inboxes, and never lost. */
export interface Ack {
  readonly messageId: string;
  readonly to: string;
  readonly timestamp: string;
  /** `delivered`: the recipient had a connection open; `queued`: it gets it when it connects. */
  readonly status: DeliveryStatus;
  /** The message's sequence number in its conversation (from 1, no gaps). */
  readonly seq: number;
  /** The sender's inbox position of the message. */
  readonly position: number;
  readonly clientMsgId: string;
}

/**
 * A stored group message's acknowledgement: it is in the group's log and in every member's
 * inbox. `status` is `delivered` when another member had a connection open, else `queued`.
 */
export interface GroupAck extends Omit<Ack, "to"> {
  readonly groupId: string;
  /** The message's `seq` in the group's log. */
  readonly seq: number;
}

/** A user came online or went offline (`onlineUsers` only with `presence: "on"`). */
export interface Presence {
  readonly userId: string;
  readonly status: PresenceStatus;
  readonly onlineUsers?: readonly string[];
}

/**
 * `from` received (`delivered`) or read (`read`) your conversation up to `seq` `upTo`; with
 * `groupId`, `from` read the group up to that group `seq` (groups of at most 20 members).
 */
export interface Receipt {
  readonly kind: "delivered" | "read";
  readonly from: string;
  readonly upTo: number;
  readonly groupId?: string;
}

/** `from` started or stopped typing to you, or in the group `groupId`. */
export interface Typing {
  readonly from: string;
  readonly state: "start" | "stop";
  readonly groupId?: string;
}

/**
 * One conversation of `conversations()`, most recent first: with a user (`with`), or a group
 * (`groupId` and `name`). `unread` counts messages from others after your read mark.
 */
export type Conversation =
  | {
      readonly with: string;
      readonly groupId?: undefined;
      readonly lastMessage: ChatMessage;
      readonly unread: number;
    }
  | {
      readonly groupId: string;
      readonly name: string;
      readonly with?: undefined;
      readonly lastMessage: GroupMessage;
      readonly unread: number;
    };

/** A page of history, oldest first; `hasMore` when older messages exist (ask with `before`). */
export interface HistoryPage {
  readonly with: string;
  readonly messages: readonly ChatMessage[];
  readonly hasMore: boolean;
}

/** A page of a group's log (messages and membership events), oldest first. */
export interface GroupHistoryPage {
  readonly groupId: string;
  readonly messages: readonly GroupMessage[];
  readonly hasMore: boolean;
}

/** The answer to `readBy`: how many of the group's `members` (the sender aside) read up to `seq`. */
export interface ReadBy {
  readonly groupId: string;
  readonly seq: number;
  readonly count: number;
  readonly members: number;
}

/** The end of a replay: this device has everything up to `position`. */
export interface Synced {
  readonly position: number;
  /** Positions retention deleted before this device synced: those messages are gone. */
  readonly trimmed?: { readonly from: number; readonly to: number };
}

/** Every server frame, loosely: the SDK reads only the fields its `type` promises. */
export interface WireFrame {
  readonly type: string;
  readonly [field: string]: unknown;
}

/** An `error` frame's fields. */
export interface WireError {
  readonly code: ErrorCode;
  readonly message: string;
  readonly limit?: LimitName | "refresh";
  readonly retryAfterMs?: number;
  readonly outcome?: SendOutcome;
  readonly clientMsgId?: string;
  /** A refusal of a command about a group names the group. */
  readonly groupId?: string;
}
