/**
 * The error catalogue: every `error` frame carries one of these codes. Part A codes are fixed by
 * the protocol; the rest are additive (part B). A client should treat an unknown code as a
 * generic failure of the request it sent.
 */
export const ErrorCode = {
  INVALID_JSON: "INVALID_JSON",
  INVALID_FORMAT: "INVALID_FORMAT",
  MISSING_TYPE: "MISSING_TYPE",
  UNKNOWN_TYPE: "UNKNOWN_TYPE",
  MISSING_RECIPIENT: "MISSING_RECIPIENT",
  EMPTY_CONTENT: "EMPTY_CONTENT",
  CONTENT_TOO_LONG: "CONTENT_TOO_LONG",
  SELF_MESSAGE: "SELF_MESSAGE",
  RATE_LIMITED: "RATE_LIMITED",
  INTERNAL_ERROR: "INTERNAL_ERROR",
  // Part B additions.
  UNAUTHORIZED: "UNAUTHORIZED",
  FORBIDDEN: "FORBIDDEN",
  NOT_FOUND: "NOT_FOUND",
  UNAVAILABLE: "UNAVAILABLE",
} as const;

export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** Whether a client may usefully resend the same request later. */
export const retryableErrors: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  ErrorCode.RATE_LIMITED,
  ErrorCode.INTERNAL_ERROR,
  ErrorCode.UNAVAILABLE,
]);

/** A validation failure: the code for the wire and a message for people. */
export interface ProtocolError {
  readonly code: ErrorCode;
  readonly message: string;
}
