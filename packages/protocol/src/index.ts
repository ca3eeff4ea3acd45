/**
 * The Mrezhen wire protocol: frame types, validation of client frames, encoders of server frames,
 * the error and close-code catalogues and the protocol limits. Shared by the server and clients.
 */
export { CLIENT_COMMAND_TYPES } from "./catalogue.js";
export { CloseCode, shouldReconnect } from "./close-codes.js";
export {
  type AckFields,
  type ConversationItem,
  conversationsFrame,
  conversationsWithGroupsFrame,
  directMessageFrame,
  encodeGroupMessage,
  encodeMessage,
  encodeMessageWithoutSeq,
  errorFrame,
  type GroupAckFields,
  type GroupConversationItem,
  groupFrame,
  groupHistoryFrame,
  groupMessageAckFrame,
  groupMessageFrame,
  groupMessageWithoutSeq,
  groupPresenceFrame,
  groupReceiptFrame,
  groupsFrame,
  groupTypingFrame,
  messageAckFrame,
  messageHistoryFrame,
  onlineUsersFrame,
  pongFrame,
  presenceDeltaFrame,
  presenceFrame,
  type ReceiptKind,
  readByFrame,
  receiptFrame,
  refreshedFrame,
  syncedFrame,
  tokenExpiringFrame,
  typingFrame,
} from "./encode.js";
export { ErrorCode, type ProtocolError, retryableErrors } from "./errors.js";
export type * from "./frames.js";
export { Limits } from "./limits.js";
export {
  codePointLength,
  groupIdProblem,
  type ParseResult,
  parseClientFrame,
  userIdProblem,
} from "./parse.js";
