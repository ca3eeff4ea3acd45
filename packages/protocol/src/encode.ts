import type { ErrorCode } from "./errors.js";
import type { ChatMessage, DeliveryStatus, ErrorDetails, PresenceStatus } from "./frames.js";

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
