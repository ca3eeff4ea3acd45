import type { ErrorCode } from "./errors.js";
import type { ChatMessage, DeliveryStatus, PresenceStatus } from "./frames.js";

/*
 * Server frames are built as strings, once per event, and the same string is written to every
 * connection that gets it. Messages travel pre-serialised (`messageJson`, produced by
 * encodeMessage and kept as-is by the stores), so delivering one costs a string concatenation,
 * not a parse and a stringify.
 */

/** Serialises a message with a stable key order; stores keep this text and splice it into frames. */
export function encodeMessage(message: ChatMessage): string {
  return JSON.stringify({
    id: message.id,
    from: message.from,
    to: message.to,
    content: message.content,
    timestamp: message.timestamp,
    seq: message.seq,
  });
}

/** `direct_message` for a recipient: `queued` when it waited offline; `position` is the recipient's inbox position. */
export function directMessageFrame(messageJson: string, position: number, queued: boolean): string {
  return queued
    ? `{"type":"direct_message","message":${messageJson},"position":${position},"queued":true}`
    : `{"type":"direct_message","message":${messageJson},"position":${position}}`;
}

export function messageAckFrame(
  messageId: string,
  to: string,
  timestamp: string,
  status: DeliveryStatus,
  seq: number,
): string {
  return JSON.stringify({ type: "message_ack", messageId, to, timestamp, status, seq });
}

export function presenceFrame(
  userId: string,
  status: PresenceStatus,
  onlineUsers: readonly string[],
): string {
  return JSON.stringify({ type: "presence", userId, status, onlineUsers });
}

export function onlineUsersFrame(users: readonly string[]): string {
  return JSON.stringify({ type: "online_users", users });
}

/** `message_history` from stored message texts, oldest first. */
export function messageHistoryFrame(other: string, messageJsons: readonly string[]): string {
  return `{"type":"message_history","with":${JSON.stringify(other)},"messages":[${messageJsons.join(",")}]}`;
}

export function pongFrame(timestamp: string): string {
  return `{"type":"pong","timestamp":"${timestamp}"}`;
}

export function errorFrame(code: ErrorCode, message: string): string {
  return JSON.stringify({ type: "error", code, message });
}
