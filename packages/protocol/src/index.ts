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
  directMessageFrame,
  encodeMessage,
  encodeMessageWithoutSeq,
  errorFrame,
  messageAckFrame,
  messageHistoryFrame,
  onlineUsersFrame,
  pongFrame,
  presenceDeltaFrame,
  presenceFrame,
  type ReceiptKind,
  receiptFrame,
  refreshedFrame,
  syncedFrame,
  tokenExpiringFrame,
  typingFrame,
} from "./encode.js";
export { ErrorCode, type ProtocolError, retryableErrors } from "./errors.js";
export type * from "./frames.js";
export { Limits } from "./limits.js";
export { codePointLength, type ParseResult, parseClientFrame, userIdProblem } from "./parse.js";
