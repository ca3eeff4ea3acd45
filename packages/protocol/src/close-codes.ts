/**
 * WebSocket close codes the server uses. The range tells a client what to do: 1000-1015 are
 * RFC 6455 codes (1003/1008/1009 mean "fix the client", 1011-1013 mean "reconnect, with backoff"); 4000-4999
 * are ours, and 4001 means "get a fresh token before reconnecting".
 * See https://www.rfc-editor.org/rfc/rfc6455#section-7.4.1.
 */
export const CloseCode = {
  /** Normal closure. */
  NORMAL: 1000,
  /** The node is going away for good (not a restart). Reconnect. */
  GOING_AWAY: 1001,
  /** The client sent a binary frame: every frame is JSON in a text frame. Terminal: fix the client. */
  UNSUPPORTED_DATA: 1003,
  /** The client broke the rules (e.g. a flood of invalid frames). Terminal: fix the client. */
  POLICY_VIOLATION: 1008,
  /** A frame was larger than the 64 KiB limit. Terminal for that frame. */
  MESSAGE_TOO_BIG: 1009,
  /** The node failed unexpectedly. Reconnect with backoff. */
  INTERNAL_ERROR: 1011,
  /** The node is restarting or draining. Reconnect (another node will take it). */
  SERVICE_RESTART: 1012,
  /** The node cannot serve this connection right now (engine down, slow consumer). Reconnect with backoff. */
  TRY_AGAIN_LATER: 1013,
  /** The token expired on an open connection. Reconnect with a fresh token. */
  UNAUTHORIZED: 4001,
} as const;

export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode];

/** Whether a client should reconnect after a close with this code (with backoff). */
export function shouldReconnect(code: number): boolean {
  return (
    code !== CloseCode.UNSUPPORTED_DATA &&
    code !== CloseCode.POLICY_VIOLATION &&
    code !== CloseCode.MESSAGE_TOO_BIG &&
    code < 4000
  );
}
