import type { ErrorCode } from "./errors.js";
import type {
  ChatMessage,
  DeliveryStatus,
  ErrorDetails,
  GroupInfo,
  GroupMessage,
  PresenceStatus,
} from "./frames.js";

/*
 * Server frames are built as strings, once per event, and the same string is written to every
 * connection that gets it. Messages travel pre-serialised (`messageJson`, produced by
 * encodeMessage and kept as-is by the stores), so delivering one costs a string concatenation,
 * not a parse and a stringify.
 */

/**
 * Serialises a message with a stable key order: `seq` last, so that a store can write everything
 * else before it knows the sequence number (`encodeMessageWithoutSeq`) and append `,"seq":N}`.
 */
export function encodeMessage(message: ChatMessage): string {
  return `${messageFields(message)},"seq":${message.seq}}`;
}

/** The message's text up to its sequence number: a complete JSON object without `seq`. */
export function encodeMessageWithoutSeq(message: Omit<ChatMessage, "seq">): string {
  return `${messageFields(message)}}`;
}

/**
 * The message's fields before `seq`, without the closing brace. A template, not JSON.stringify
 * of an object: this runs once per message. Strings a client chose are escaped; the id is a
 * server-made UUID and the timestamp an ISO string, neither of which needs it.
 */
function messageFields(message: Omit<ChatMessage, "seq">): string {
  const clientMsgId =
    message.clientMsgId === undefined
      ? ""
      : `,"clientMsgId":${JSON.stringify(message.clientMsgId)}`;
  return `{"id":"${message.id}","from":${JSON.stringify(message.from)},"to":${JSON.stringify(message.to)},"content":${JSON.stringify(message.content)},"timestamp":"${message.timestamp}"${clientMsgId}`;
}

/** `direct_message` for a recipient: `queued` when it waited offline; `position` is the recipient's inbox position. */
export function directMessageFrame(messageJson: string, position: number, queued: boolean): string {
  return queued
    ? `{"type":"direct_message","message":${messageJson},"position":${position},"queued":true}`
    : `{"type":"direct_message","message":${messageJson},"position":${position}}`;
}

export interface AckFields {
  readonly messageId: string;
  readonly to: string;
  readonly timestamp: string;
  readonly status: DeliveryStatus;
  readonly seq: number;
  /** The sender's inbox position of the message, so a syncing device has no gap for it. */
  readonly position: number;
  readonly clientMsgId: string | undefined;
}

export function messageAckFrame(ack: AckFields): string {
  // A template, not JSON.stringify of an object: this runs once per message. Only the strings a
  // client chose need escaping; the id is a UUID and the timestamp an ISO string.
  const clientMsgId =
    ack.clientMsgId === undefined ? "" : `,"clientMsgId":${JSON.stringify(ack.clientMsgId)}`;
  return `{"type":"message_ack","messageId":"${ack.messageId}","to":${JSON.stringify(ack.to)},"timestamp":"${ack.timestamp}","status":"${ack.status}","seq":${ack.seq},"position":${ack.position}${clientMsgId}}`;
}

export function presenceFrame(
  userId: string,
  status: PresenceStatus,
  onlineUsers: readonly string[],
): string {
  return JSON.stringify({ type: "presence", userId, status, onlineUsers });
}

/**
 * `presence` for a `presence=contacts` connection: the change alone, without the online list, so
 * it costs the same however many users are online.
 */
export function presenceDeltaFrame(userId: string, status: PresenceStatus): string {
  return `{"type":"presence","userId":${JSON.stringify(userId)},"status":"${status}"}`;
}

export function onlineUsersFrame(users: readonly string[]): string {
  return JSON.stringify({ type: "online_users", users });
}

/** `message_history` from stored message texts, oldest first; `hasMore` when older ones exist. */
export function messageHistoryFrame(
  other: string,
  messageJsons: readonly string[],
  hasMore: boolean,
): string {
  return `{"type":"message_history","with":${JSON.stringify(other)},"messages":[${messageJsons.join(",")}],"hasMore":${hasMore}}`;
}

/** The end of a replay: everything up to `position` was sent; `trimmed` names positions lost to retention. */
export function syncedFrame(
  position: number,
  trimmed: { from: number; to: number } | undefined,
): string {
  return JSON.stringify(
    trimmed === undefined ? { type: "synced", position } : { type: "synced", position, trimmed },
  );
}

export type ReceiptKind = "delivered" | "read";

/** `from` received (or read) the conversation up to its `seq` `upTo`. */
export function receiptFrame(kind: ReceiptKind, from: string, upTo: number): string {
  return JSON.stringify({ type: "receipt", kind, from, upTo });
}

export function typingFrame(from: string, state: "start" | "stop"): string {
  return JSON.stringify({ type: "typing", from, state });
}

export interface ConversationItem {
  readonly with: string;
  /** The newest message, as stored. */
  readonly lastMessageJson: string;
  /** Messages from the other party after this user's read watermark. */
  readonly unread: number;
}

export function conversationsFrame(items: readonly ConversationItem[]): string {
  const parts = items.map(
    (item) =>
      `{"with":${JSON.stringify(item.with)},"lastMessage":${item.lastMessageJson},"unread":${item.unread}}`,
  );
  return `{"type":"conversations","items":[${parts.join(",")}]}`;
}

export function pongFrame(timestamp: string): string {
  return `{"type":"pong","timestamp":"${timestamp}"}`;
}

/** The token expires at `exp` (seconds since the epoch): refresh it before then. */
export function tokenExpiringFrame(exp: number): string {
  return `{"type":"token_expiring","exp":${exp}}`;
}

/** A refresh was accepted: the connection lives until `exp` (seconds since the epoch). */
export function refreshedFrame(exp: number): string {
  return `{"type":"refreshed","exp":${exp}}`;
}

export function errorFrame(code: ErrorCode, message: string, details?: ErrorDetails): string {
  return JSON.stringify(
    details === undefined
      ? { type: "error", code, message }
      : { type: "error", code, message, ...details },
  );
}

// ---- Groups ----

/**
 * A group message as stored, in the key order of {@link encodeMessage} (`seq` last, so a store
 * can append it): `content` for a message, `event` for a membership change.
 */
export function encodeGroupMessage(message: GroupMessage): string {
  return `${groupMessageWithoutSeq(message)},"seq":${message.seq}}`;
}

/** The group message's text up to its `seq`, without the closing brace (not JSON). */
export function groupMessageWithoutSeq(message: Omit<GroupMessage, "seq">): string {
  const body =
    message.event === undefined
      ? `"content":${JSON.stringify(message.content ?? "")}`
      : `"event":${JSON.stringify(message.event)}`;
  const clientMsgId =
    message.clientMsgId === undefined
      ? ""
      : `,"clientMsgId":${JSON.stringify(message.clientMsgId)}`;
  return `{"id":"${message.id}","groupId":${JSON.stringify(message.groupId)},"from":${JSON.stringify(message.from)},${body},"timestamp":"${message.timestamp}"${clientMsgId}`;
}

/** `group_message` for a member: `position` is the member's inbox position of it. */
export function groupMessageFrame(
  groupId: string,
  messageJson: string,
  position: number,
  queued: boolean,
): string {
  return `{"type":"group_message","groupId":${JSON.stringify(groupId)},"message":${messageJson},"position":${position}${queued ? ',"queued":true' : ""}}`;
}

export interface GroupAckFields {
  readonly messageId: string;
  readonly groupId: string;
  readonly timestamp: string;
  readonly status: DeliveryStatus;
  readonly seq: number;
  readonly position: number;
  readonly clientMsgId: string | undefined;
}

/** The ack of a group message: `groupId` where a direct message's ack has `to`. */
export function groupMessageAckFrame(ack: GroupAckFields): string {
  const clientMsgId =
    ack.clientMsgId === undefined ? "" : `,"clientMsgId":${JSON.stringify(ack.clientMsgId)}`;
  return `{"type":"message_ack","messageId":"${ack.messageId}","groupId":${JSON.stringify(ack.groupId)},"timestamp":"${ack.timestamp}","status":"${ack.status}","seq":${ack.seq},"position":${ack.position}${clientMsgId}}`;
}

/** A group's current state: the answer to a group command, and news for added members. */
export function groupFrame(group: GroupInfo): string {
  return JSON.stringify({ type: "group", group });
}

/** The answer to `get_groups`. */
export function groupsFrame(groups: readonly GroupInfo[]): string {
  return JSON.stringify({ type: "groups", groups });
}

/** `message_history` of a group. */
export function groupHistoryFrame(
  groupId: string,
  messageJsons: readonly string[],
  hasMore: boolean,
): string {
  return `{"type":"message_history","groupId":${JSON.stringify(groupId)},"messages":[${messageJsons.join(",")}],"hasMore":${hasMore}}`;
}

/** A member of a small group read it up to `upTo`. */
export function groupReceiptFrame(groupId: string, from: string, upTo: number): string {
  return JSON.stringify({ type: "receipt", kind: "read", groupId, from, upTo });
}

export function groupTypingFrame(groupId: string, from: string, state: "start" | "stop"): string {
  return JSON.stringify({ type: "typing", groupId, from, state });
}

/**
 * `group_presence` for a `presence=contacts` connection: `userId`, a member of `groupId` (a group
 * the connection's user is in too), came online or went offline. A template: a popular user's
 * change writes one per listening connection.
 */
export function groupPresenceFrame(
  groupId: string,
  userId: string,
  status: PresenceStatus,
): string {
  return `{"type":"group_presence","groupId":${JSON.stringify(groupId)},"userId":${JSON.stringify(userId)},"status":"${status}"}`;
}

/** The answer to `get_read_by`: how many members (the sender aside) read up to `seq`. */
export function readByFrame(groupId: string, seq: number, count: number, members: number): string {
  return JSON.stringify({ type: "read_by", groupId, seq, count, members });
}

export interface GroupConversationItem {
  readonly groupId: string;
  readonly name: string;
  readonly lastMessageJson: string;
  readonly unread: number;
}

/** `conversations` with groups beside direct conversations, most recent first. */
export function conversationsWithGroupsFrame(
  items: readonly (ConversationItem | GroupConversationItem)[],
): string {
  const parts = items.map((item) =>
    "groupId" in item
      ? `{"groupId":${JSON.stringify(item.groupId)},"name":${JSON.stringify(item.name)},"lastMessage":${item.lastMessageJson},"unread":${item.unread}}`
      : `{"with":${JSON.stringify(item.with)},"lastMessage":${item.lastMessageJson},"unread":${item.unread}}`,
  );
  return `{"type":"conversations","items":[${parts.join(",")}]}`;
}
