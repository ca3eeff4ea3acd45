import type { ErrorCode } from "./errors.js";

/**
 * A stored direct message as it travels on the wire. Part A clients see `id`, `from`, `content`
 * and `timestamp`; `to` and `seq` (per-conversation sequence, from 1, no gaps) are additive.
 */
export interface ChatMessage {
  readonly id: string;
  readonly from: string;
  readonly to: string;
  readonly content: string;
  /** ISO 8601 UTC, e.g. `2026-11-26T03:00:00.000Z`. */
  readonly timestamp: string;
  readonly seq: number;
  /** The sender's idempotency key, when it gave one (B2). */
  readonly clientMsgId?: string;
}

// ---- Client → server commands (already validated; see parse.ts) ----

export interface DirectMessageCommand {
  readonly type: "direct_message";
  readonly to: string;
  readonly content: string;
  /** Idempotency key (1..64 chars): a retry with the same key gets the same ack, stores nothing. */
  readonly clientMsgId?: string;
}

export interface GetHistoryCommand {
  readonly type: "get_history";
  readonly with: string;
  /** Already defaulted and clamped to 1..100. */
  readonly limit: number;
  /** Only messages with a conversation `seq` below this one (a page further back). */
  readonly before?: number;
}

export interface GetOnlineUsersCommand {
  readonly type: "get_online_users";
  /**
   * Asks about these users only (1 to Limits.ONLINE_QUERY_MAX_USERS distinct ids): the answer
   * lists those of them online. Absent: every online user.
   */
  readonly users?: readonly string[];
}

export interface PingCommand {
  readonly type: "ping";
}

/** B2: this device processed its inbox up to `upTo` (cumulative). */
export interface AckCommand {
  readonly type: "ack";
  readonly upTo: number;
}

/** B2: replay the inbox after `since`, then `synced`. */
export interface SyncCommand {
  readonly type: "sync";
  readonly since: number;
}

/** B2: this user read the conversation with `with` up to conversation `seq` `upTo`. */
export interface MarkReadCommand {
  readonly type: "mark_read";
  readonly with: string;
  readonly upTo: number;
}

export interface TypingCommand {
  readonly type: "typing";
  readonly to: string;
  readonly state: "start" | "stop";
}

export interface GetConversationsCommand {
  readonly type: "get_conversations";
  /** Already defaulted and clamped to 1..100. */
  readonly limit: number;
}

/**
 * Replaces the connection's token with a fresh one for the same user (`sub`), so that the
 * connection outlives the first token's `exp`. Answered with `refreshed` or an error; on an error
 * the connection keeps its current token and deadline.
 */
export interface RefreshCommand {
  readonly type: "refresh";
  /** A JWT, as at connect time (at most Limits.MAX_TOKEN_LENGTH characters). */
  readonly token: string;
}

// ---- Groups (additive: a client that sends none of these sees nothing new) ----

/** Creates a group of the sender and `members` (the sender is its creator and first admin). */
export interface CreateGroupCommand {
  readonly type: "create_group";
  readonly name: string;
  /** Other members (deduplicated; the sender is added if missing). */
  readonly members: readonly string[];
}

export interface AddMemberCommand {
  readonly type: "add_member";
  readonly groupId: string;
  readonly userId: string;
}

export interface RemoveMemberCommand {
  readonly type: "remove_member";
  readonly groupId: string;
  readonly userId: string;
}

export interface LeaveGroupCommand {
  readonly type: "leave_group";
  readonly groupId: string;
}

export interface RenameGroupCommand {
  readonly type: "rename_group";
  readonly groupId: string;
  readonly name: string;
}

export interface GetGroupsCommand {
  readonly type: "get_groups";
}

export interface GroupMessageCommand {
  readonly type: "group_message";
  readonly groupId: string;
  readonly content: string;
  readonly clientMsgId?: string;
}

/** `get_history` of a group: the same paging as a conversation's, by group `seq`. */
export interface GetGroupHistoryCommand {
  readonly type: "get_history";
  readonly groupId: string;
  readonly limit: number;
  readonly before?: number;
}

export interface MarkGroupReadCommand {
  readonly type: "mark_read";
  readonly groupId: string;
  readonly upTo: number;
}

export interface GroupTypingCommand {
  readonly type: "typing";
  readonly groupId: string;
  readonly state: "start" | "stop";
}

/** How many members have read a group up to `seq` (the aggregate receipt of large groups). */
export interface GetReadByCommand {
  readonly type: "get_read_by";
  readonly groupId: string;
  readonly seq: number;
}

export type GroupCommand =
  | CreateGroupCommand
  | AddMemberCommand
  | RemoveMemberCommand
  | LeaveGroupCommand
  | RenameGroupCommand
  | GetGroupsCommand
  | GroupMessageCommand
  | GetGroupHistoryCommand
  | MarkGroupReadCommand
  | GroupTypingCommand
  | GetReadByCommand;

/**
 * A stored event of a group's log. A group message has `content`; a membership event has
 * `event` instead, and takes its place in the group's `seq` like a message.
 */
export interface GroupMessage {
  readonly id: string;
  readonly groupId: string;
  /** The sender, or who did the membership change. */
  readonly from: string;
  readonly content?: string;
  readonly event?: GroupEvent;
  readonly timestamp: string;
  readonly seq: number;
  readonly clientMsgId?: string;
}

export type GroupEvent =
  | { readonly kind: "created"; readonly name: string; readonly members: readonly string[] }
  | { readonly kind: "joined" | "removed" | "left"; readonly userId: string }
  | { readonly kind: "renamed"; readonly name: string };

export interface GroupInfo {
  readonly groupId: string;
  readonly name: string;
  readonly members: readonly string[];
  /** The creator first. */
  readonly admins: readonly string[];
  readonly createdBy: string;
  readonly createdAt: string;
}

export type ClientCommand =
  | GroupCommand
  | RefreshCommand
  | DirectMessageCommand
  | GetHistoryCommand
  | GetOnlineUsersCommand
  | PingCommand
  | AckCommand
  | SyncCommand
  | MarkReadCommand
  | TypingCommand
  | GetConversationsCommand;

export type ClientCommandType = ClientCommand["type"];

// ---- Server → client frames ----

export type DeliveryStatus = "delivered" | "queued";
export type PresenceStatus = "online" | "offline";

export interface DirectMessageFrame {
  readonly type: "direct_message";
  readonly message: ChatMessage;
  /** The recipient's inbox position of this message. */
  readonly position?: number;
  /** Present (true) when the message waited in the offline queue. */
  readonly queued?: true;
}

export interface MessageAckFrame {
  readonly type: "message_ack";
  readonly messageId: string;
  readonly to: string;
  readonly timestamp: string;
  readonly status: DeliveryStatus;
  /** The conversation sequence number the message got. */
  readonly seq?: number;
}

export interface PresenceFrame {
  readonly type: "presence";
  readonly userId: string;
  readonly status: PresenceStatus;
  readonly onlineUsers: readonly string[];
}

/**
 * A presence change for a `presence=contacts` connection: one of its contacts came online or went
 * offline. Unlike {@link PresenceFrame} it carries no list, so its size does not grow with the
 * number of users online.
 */
export interface PresenceDeltaFrame {
  readonly type: "presence";
  readonly userId: string;
  readonly status: PresenceStatus;
}

/**
 * For a `presence=contacts` connection: a member of a group its user is in came online or went
 * offline. One per connection per change, naming one group they share, whatever the number of
 * groups they share (presence is per user).
 */
export interface GroupPresenceFrame {
  readonly type: "group_presence";
  readonly groupId: string;
  readonly userId: string;
  readonly status: PresenceStatus;
}

export interface OnlineUsersFrame {
  readonly type: "online_users";
  readonly users: readonly string[];
}

export interface MessageHistoryFrame {
  readonly type: "message_history";
  readonly with: string;
  readonly messages: readonly ChatMessage[];
}

export interface PongFrame {
  readonly type: "pong";
  readonly timestamp: string;
}

export interface ErrorFrame {
  readonly type: "error";
  readonly code: ErrorCode;
  readonly message: string;
  /** With RATE_LIMITED (an addition): which limit refused, see {@link LimitName}. */
  readonly limit?: LimitName;
  /** With RATE_LIMITED (an addition): when the same request may succeed, in milliseconds. */
  readonly retryAfterMs?: number;
  /**
   * With UNAVAILABLE for a `direct_message` (an addition): `not_stored` when the message was
   * certainly not stored (resend it later), `unknown` when it may have been (resend it with the
   * same clientMsgId, which never stores it twice).
   */
  readonly outcome?: SendOutcome;
  /** The failed send's clientMsgId, when it had one (an addition), so a client can match it. */
  readonly clientMsgId?: string;
  /**
   * With FORBIDDEN or NOT_FOUND answering a command about a group (an addition): that group, so
   * a client can tell which request was refused, including one that has no answer of its own
   * (`mark_read`, `typing`).
   */
  readonly groupId?: string;
}

/**
 * The connection's token expires soon: send `refresh` with a fresh token before `exp`, or the
 * connection is closed with 4001 at `exp`. Sent once per token.
 */
export interface TokenExpiringFrame {
  readonly type: "token_expiring";
  /** The current token's `exp`: seconds since the epoch, as in the JWT. */
  readonly exp: number;
}

/** A `refresh` was accepted: the connection now lives until the new token's `exp`. */
export interface RefreshedFrame {
  readonly type: "refreshed";
  /** The new token's `exp`: seconds since the epoch, as in the JWT. */
  readonly exp: number;
}

/** The optional fields an error frame may carry beside its code and message. */
export type ErrorDetails = Partial<
  Pick<ErrorFrame, "limit" | "retryAfterMs" | "outcome" | "clientMsgId" | "groupId">
>;

/** What a failed send may have done: see {@link ErrorFrame.outcome}. */
export type SendOutcome = "not_stored" | "unknown";

/**
 * The limits behind a RATE_LIMITED error: the send rate (`messages`), the daily quotas of a
 * sender (`new_conversations_per_day`, `bytes_per_day`, per UTC day) and the read rate of
 * get_history, get_conversations and get_online_users (`reads`), and `refresh` frames (one a
 * second per connection: each costs a signature check).
 */
export type LimitName =
  | "messages"
  | "new_conversations_per_day"
  | "bytes_per_day"
  | "reads"
  | "refresh";

export type ServerFrame =
  | DirectMessageFrame
  | MessageAckFrame
  | PresenceFrame
  | PresenceDeltaFrame
  | GroupPresenceFrame
  | OnlineUsersFrame
  | MessageHistoryFrame
  | PongFrame
  | TokenExpiringFrame
  | RefreshedFrame
  | ErrorFrame;
