/** Protocol limits, part A. Changing any of these changes the wire contract. */
export const Limits = {
  /** Largest accepted frame, in bytes; larger closes the connection with 1009. */
  MAX_FRAME_BYTES: 64 * 1024,
  /** Longest message content, in characters (Unicode code points). */
  MAX_CONTENT_CHARS: 5000,
  /**
   * User ids (a token's `sub`, a frame's `to` and `with`) are strings of this many characters
   * (Unicode code points), well-formed, with no control, bidirectional formatting or zero-width
   * character, and not only whitespace.
   */
  MIN_USER_ID_LENGTH: 1,
  MAX_USER_ID_LENGTH: 128,
  /** `get_history.limit`: default and clamp range. */
  HISTORY_DEFAULT_LIMIT: 50,
  HISTORY_MIN_LIMIT: 1,
  HISTORY_MAX_LIMIT: 100,
  /** `clientMsgId` length range (B2), in characters (Unicode code points); it must be well-formed. */
  MIN_CLIENT_MSG_ID_LENGTH: 1,
  MAX_CLIENT_MSG_ID_LENGTH: 64,
  /** `get_conversations.limit`: default and clamp range. */
  CONVERSATIONS_DEFAULT_LIMIT: 50,
  CONVERSATIONS_MAX_LIMIT: 100,
  /**
   * Longest token accepted, in characters (during the upgrade and in `refresh`): refused unread,
   * no legitimate token comes close (an RS256 token with ordinary claims has under 1,000).
   */
  MAX_TOKEN_LENGTH: 4096,
  /** `get_online_users.users`: at most this many ids per question. */
  ONLINE_QUERY_MAX_USERS: 100,
  /** A group's name, in characters (Unicode code points); not only whitespace. */
  MAX_GROUP_NAME_CHARS: 100,
  /**
   * `create_group.members`: at most this many in the command (GROUP_MAX_MEMBERS, the server's
   * limit, may be lower; add_member grows a group up to it).
   */
  CREATE_GROUP_MAX_MEMBERS: 1000,
} as const;
