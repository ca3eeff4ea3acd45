import { ErrorCode, type ProtocolError } from "./errors.js";
import type { ClientCommand, GetHistoryCommand } from "./frames.js";
import { Limits } from "./limits.js";

/** The outcome of reading one client frame: a validated command, or the error to answer with. */
export type ParseResult =
  | { readonly ok: true; readonly command: ClientCommand }
  | { readonly ok: false; readonly error: ProtocolError };

type JsonObject = Record<string, unknown>;

/**
 * Reads one text frame from a client. Never throws: every input yields either a validated command
 * (a fresh object holding only the known fields) or a {@link ProtocolError}. Unknown fields are
 * ignored, `from` included: the sender is always the token's subject.
 *
 * @example
 * const result = parseClientFrame('{"type":"ping"}');
 * if (result.ok) handle(result.command); else reply(result.error);
 */
export function parseClientFrame(text: string): ParseResult {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return fail(ErrorCode.INVALID_JSON, "The frame is not valid JSON.");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return fail(ErrorCode.INVALID_FORMAT, "A frame must be a JSON object.");
  }
  const frame = value as JsonObject;
  const type = frame["type"];
  if (type === undefined || type === null || type === "") {
    return fail(ErrorCode.MISSING_TYPE, 'The frame has no "type".');
  }
  if (typeof type !== "string") {
    return fail(ErrorCode.INVALID_FORMAT, '"type" must be a string.');
  }
  switch (type) {
    case "direct_message":
      return parseDirectMessage(frame);
    case "get_history":
      return "groupId" in frame ? parseGetGroupHistory(frame) : parseGetHistory(frame);
    case "get_online_users":
      return parseGetOnlineUsers(frame);
    case "ping":
      return PING;
    case "ack":
      return parseAck(frame);
    case "sync":
      return parseSync(frame);
    case "mark_read":
      return "groupId" in frame ? parseMarkGroupRead(frame) : parseMarkRead(frame);
    case "typing":
      return "groupId" in frame ? parseGroupTyping(frame) : parseTyping(frame);
    case "get_conversations":
      return parseGetConversations(frame);
    case "refresh":
      return parseRefresh(frame);
    case "create_group":
      return parseCreateGroup(frame);
    case "add_member":
    case "remove_member":
      return parseMemberChange(frame, type);
    case "leave_group":
      return withGroupId(frame, (groupId) => ({ type: "leave_group", groupId }));
    case "rename_group":
      return withGroupId(frame, (groupId) => {
        const name = readGroupName(frame);
        return typeof name === "string" ? { type: "rename_group", groupId, name } : name;
      });
    case "get_groups":
      return GET_GROUPS;
    case "group_message":
      return parseGroupMessage(frame);
    case "get_read_by":
      return withGroupId(frame, (groupId) => {
        const seq = requireWholeNumber(frame, "seq", 1);
        return typeof seq === "number" ? { type: "get_read_by", groupId, seq } : seq;
      });
    default:
      return fail(ErrorCode.UNKNOWN_TYPE, `Unknown frame type ${quote(type)}.`);
  }
}

const GET_ONLINE_USERS: ParseResult = { ok: true, command: { type: "get_online_users" } };
const PING: ParseResult = { ok: true, command: { type: "ping" } };
const GET_GROUPS: ParseResult = { ok: true, command: { type: "get_groups" } };

function parseDirectMessage(frame: JsonObject): ParseResult {
  const to = readUserId(frame, "to");
  if (typeof to !== "string") return to;
  const content = readContent(frame);
  if (typeof content !== "string") return content;
  const clientMsgId = readClientMsgId(frame);
  if (typeof clientMsgId === "object") return clientMsgId;
  return clientMsgId === undefined
    ? { ok: true, command: { type: "direct_message", to, content } }
    : { ok: true, command: { type: "direct_message", to, content, clientMsgId } };
}

function readContent(frame: JsonObject): string | ParseResult {
  const content = frame["content"];
  if (content === undefined || content === null) {
    return fail(ErrorCode.EMPTY_CONTENT, '"content" is missing.');
  }
  if (typeof content !== "string") {
    return fail(ErrorCode.INVALID_FORMAT, '"content" must be a string.');
  }
  if (!NON_WHITESPACE.test(content)) {
    return fail(ErrorCode.EMPTY_CONTENT, '"content" is empty.');
  }
  if (
    content.length > Limits.MAX_CONTENT_CHARS &&
    codePointLength(content) > Limits.MAX_CONTENT_CHARS
  ) {
    return fail(
      ErrorCode.CONTENT_TOO_LONG,
      `"content" is longer than ${Limits.MAX_CONTENT_CHARS} characters.`,
    );
  }
  return content;
}

function readClientMsgId(frame: JsonObject): string | undefined | ParseResult {
  const clientMsgId = frame["clientMsgId"];
  if (clientMsgId === undefined || clientMsgId === null) return undefined;
  if (
    typeof clientMsgId !== "string" ||
    clientMsgId.length < Limits.MIN_CLIENT_MSG_ID_LENGTH ||
    (clientMsgId.length > Limits.MAX_CLIENT_MSG_ID_LENGTH &&
      codePointLength(clientMsgId) > Limits.MAX_CLIENT_MSG_ID_LENGTH)
  ) {
    return fail(
      ErrorCode.INVALID_FORMAT,
      `"clientMsgId" must be a string of ${Limits.MIN_CLIENT_MSG_ID_LENGTH} to ${Limits.MAX_CLIENT_MSG_ID_LENGTH} characters.`,
    );
  }
  // Two keys that differ only in lone surrogates ("k\ud800", "k\udbff") are both written to
  // Redis as U+FFFD: the second would be taken for a retry of the first and silently not stored.
  if (!clientMsgId.isWellFormed()) {
    return fail(
      ErrorCode.INVALID_FORMAT,
      '"clientMsgId" must be well-formed Unicode: it has a lone surrogate.',
    );
  }
  return clientMsgId;
}

// ---- Groups ----

/**
 * Reads `groupId` (the same well-formedness rule as user ids: a group id names keys as a user
 * id does) and builds the command from it.
 */
function withGroupId(
  frame: JsonObject,
  build: (groupId: string) => ClientCommand | ParseResult,
): ParseResult {
  const value = frame["groupId"];
  if (value === undefined || value === null || value === "") {
    return fail(ErrorCode.MISSING_RECIPIENT, '"groupId" is missing.');
  }
  if (typeof value !== "string") {
    return fail(ErrorCode.INVALID_FORMAT, '"groupId" must be a group id string.');
  }
  const problem = groupIdProblem(value);
  if (problem !== undefined) {
    return fail(ErrorCode.INVALID_FORMAT, `"groupId" is not a valid group id: it ${problem}.`);
  }
  const built = build(value);
  return "type" in built ? { ok: true, command: built } : built;
}

/** A group's name: 1 to MAX_GROUP_NAME_CHARS characters, well-formed, not only whitespace. */
function readGroupName(frame: JsonObject): string | ParseResult {
  const name = frame["name"];
  const max = Limits.MAX_GROUP_NAME_CHARS;
  if (
    typeof name !== "string" ||
    !NON_WHITESPACE.test(name) ||
    !name.isWellFormed() ||
    CONTROL_CHARACTER.test(name) ||
    BIDI_CONTROL.test(name) ||
    (name.length > max && codePointLength(name) > max)
  ) {
    return fail(
      ErrorCode.INVALID_FORMAT,
      `"name" must be 1 to ${max} characters of well-formed text, with no control or bidirectional formatting character.`,
    );
  }
  return name;
}

function parseCreateGroup(frame: JsonObject): ParseResult {
  const name = readGroupName(frame);
  if (typeof name !== "string") return name;
  const members = frame["members"];
  const max = Limits.CREATE_GROUP_MAX_MEMBERS;
  if (!Array.isArray(members) || members.length > max) {
    return fail(ErrorCode.INVALID_FORMAT, `"members" must be an array of 0 to ${max} user ids.`);
  }
  for (const member of members) {
    const problem = typeof member === "string" ? userIdProblem(member) : "is not a string";
    if (problem !== undefined) {
      return fail(ErrorCode.INVALID_FORMAT, `"members" holds an invalid user id: it ${problem}.`);
    }
  }
  return {
    ok: true,
    command: { type: "create_group", name, members: [...new Set<string>(members)] },
  };
}

function parseMemberChange(frame: JsonObject, type: "add_member" | "remove_member"): ParseResult {
  return withGroupId(frame, (groupId) => {
    const value = frame["userId"];
    if (value === undefined || value === null || value === "") {
      return fail(ErrorCode.MISSING_RECIPIENT, '"userId" is missing.');
    }
    const problem = typeof value === "string" ? userIdProblem(value) : "is not a string";
    if (problem !== undefined || typeof value !== "string") {
      return fail(ErrorCode.INVALID_FORMAT, `"userId" is not a valid user id: it ${problem}.`);
    }
    return { type, groupId, userId: value };
  });
}

function parseGroupMessage(frame: JsonObject): ParseResult {
  return withGroupId(frame, (groupId) => {
    const content = readContent(frame);
    if (typeof content !== "string") return content;
    const clientMsgId = readClientMsgId(frame);
    if (typeof clientMsgId === "object") return clientMsgId;
    return clientMsgId === undefined
      ? { type: "group_message", groupId, content }
      : { type: "group_message", groupId, content, clientMsgId };
  });
}

function parseGetGroupHistory(frame: JsonObject): ParseResult {
  return withGroupId(frame, (groupId) => {
    const limit = readLimit(
      frame,
      Limits.HISTORY_DEFAULT_LIMIT,
      Limits.HISTORY_MIN_LIMIT,
      Limits.HISTORY_MAX_LIMIT,
    );
    if (typeof limit !== "number") return limit;
    const before = readWholeNumber(frame, "before", 1);
    if (typeof before === "object") return before;
    return before === undefined
      ? { type: "get_history", groupId, limit }
      : { type: "get_history", groupId, limit, before };
  });
}

function parseMarkGroupRead(frame: JsonObject): ParseResult {
  return withGroupId(frame, (groupId) => {
    const upTo = requireWholeNumber(frame, "upTo", 1);
    return typeof upTo === "number" ? { type: "mark_read", groupId, upTo } : upTo;
  });
}

function parseGroupTyping(frame: JsonObject): ParseResult {
  return withGroupId(frame, (groupId) => {
    const state = frame["state"];
    if (state !== "start" && state !== "stop") {
      return fail(ErrorCode.INVALID_FORMAT, '"state" must be "start" or "stop".');
    }
    return { type: "typing", groupId, state };
  });
}

function parseGetHistory(frame: JsonObject): ParseResult {
  const other = readUserId(frame, "with");
  if (typeof other !== "string") return other;
  const limit = readLimit(
    frame,
    Limits.HISTORY_DEFAULT_LIMIT,
    Limits.HISTORY_MIN_LIMIT,
    Limits.HISTORY_MAX_LIMIT,
  );
  if (typeof limit !== "number") return limit;
  const before = readWholeNumber(frame, "before", 1);
  if (typeof before === "object") return before;
  const command: GetHistoryCommand =
    before === undefined
      ? { type: "get_history", with: other, limit }
      : { type: "get_history", with: other, limit, before };
  return { ok: true, command };
}

/**
 * `get_online_users`, optionally with `users`: an array of 1 to ONLINE_QUERY_MAX_USERS user ids
 * (duplicates are asked once). Bounded, so that one question costs the node O(its size).
 */
function parseGetOnlineUsers(frame: JsonObject): ParseResult {
  const users = frame["users"];
  if (users === undefined || users === null) return GET_ONLINE_USERS;
  const max = Limits.ONLINE_QUERY_MAX_USERS;
  if (!Array.isArray(users) || users.length === 0 || users.length > max) {
    return fail(ErrorCode.INVALID_FORMAT, `"users" must be an array of 1 to ${max} user ids.`);
  }
  for (const user of users) {
    if (typeof user !== "string") {
      return fail(
        ErrorCode.INVALID_FORMAT,
        `"users" must hold user id strings of ${Limits.MIN_USER_ID_LENGTH} to ${Limits.MAX_USER_ID_LENGTH} characters.`,
      );
    }
    // The same rule as `to` and `with`: only ids a token can carry.
    const problem = userIdProblem(user);
    if (problem !== undefined) {
      return fail(ErrorCode.INVALID_FORMAT, `"users" holds an invalid user id: it ${problem}.`);
    }
  }
  return { ok: true, command: { type: "get_online_users", users: [...new Set<string>(users)] } };
}

function parseAck(frame: JsonObject): ParseResult {
  const upTo = requireWholeNumber(frame, "upTo", 0);
  return typeof upTo === "number" ? { ok: true, command: { type: "ack", upTo } } : upTo;
}

function parseSync(frame: JsonObject): ParseResult {
  const since = requireWholeNumber(frame, "since", 0);
  return typeof since === "number" ? { ok: true, command: { type: "sync", since } } : since;
}

function parseMarkRead(frame: JsonObject): ParseResult {
  const other = readUserId(frame, "with");
  if (typeof other !== "string") return other;
  const upTo = requireWholeNumber(frame, "upTo", 1);
  return typeof upTo === "number"
    ? { ok: true, command: { type: "mark_read", with: other, upTo } }
    : upTo;
}

function parseTyping(frame: JsonObject): ParseResult {
  const to = readUserId(frame, "to");
  if (typeof to !== "string") return to;
  const state = frame["state"];
  if (state !== "start" && state !== "stop") {
    return fail(ErrorCode.INVALID_FORMAT, '"state" must be "start" or "stop".');
  }
  return { ok: true, command: { type: "typing", to, state } };
}

function parseGetConversations(frame: JsonObject): ParseResult {
  const limit = readLimit(
    frame,
    Limits.CONVERSATIONS_DEFAULT_LIMIT,
    1,
    Limits.CONVERSATIONS_MAX_LIMIT,
  );
  return typeof limit === "number"
    ? { ok: true, command: { type: "get_conversations", limit } }
    : limit;
}

/**
 * `refresh { token }`: a JWT to replace the connection's. Only its shape is checked here (a
 * non-empty string of at most MAX_TOKEN_LENGTH characters); the server verifies it.
 */
function parseRefresh(frame: JsonObject): ParseResult {
  const token = frame["token"];
  if (typeof token !== "string" || token === "" || token.length > Limits.MAX_TOKEN_LENGTH) {
    return fail(
      ErrorCode.INVALID_FORMAT,
      `"token" must be a JWT string of 1 to ${Limits.MAX_TOKEN_LENGTH} characters.`,
    );
  }
  return { ok: true, command: { type: "refresh", token } };
}

/** An optional `limit`: absent or null gives the default; a number is floored and clamped. */
function readLimit(
  frame: JsonObject,
  fallback: number,
  min: number,
  max: number,
): number | ParseResult {
  const value = frame["limit"];
  if (value === undefined || value === null) return fallback;
  if (typeof value !== "number") return fail(ErrorCode.INVALID_FORMAT, '"limit" must be a number.');
  return Math.min(max, Math.max(min, Math.floor(value)));
}

/** An optional whole number ≥ `min` (a position, a sequence number): undefined when absent. */
function readWholeNumber(
  frame: JsonObject,
  field: string,
  min: number,
): number | undefined | ParseResult {
  const value = frame[field];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < min) {
    return fail(ErrorCode.INVALID_FORMAT, `"${field}" must be a whole number of at least ${min}.`);
  }
  return value;
}

function requireWholeNumber(frame: JsonObject, field: string, min: number): number | ParseResult {
  return (
    readWholeNumber(frame, field, min) ?? fail(ErrorCode.INVALID_FORMAT, `"${field}" is missing.`)
  );
}

/**
 * Reads a field naming another user: missing or empty is MISSING_RECIPIENT; the wrong type, or a
 * string that no token's `sub` may be (see {@link userIdProblem}), INVALID_FORMAT.
 */
function readUserId(frame: JsonObject, field: "to" | "with"): string | ParseResult {
  const value = frame[field];
  if (value === undefined || value === null || value === "") {
    return fail(ErrorCode.MISSING_RECIPIENT, `"${field}" is missing.`);
  }
  if (typeof value !== "string") {
    return fail(ErrorCode.INVALID_FORMAT, `"${field}" must be a user id string.`);
  }
  const problem = userIdProblem(value);
  if (problem !== undefined) {
    return fail(ErrorCode.INVALID_FORMAT, `"${field}" is not a valid user id: it ${problem}.`);
  }
  return value;
}

const NON_WHITESPACE = /\S/;
/** C0 and C1 controls (NUL, newline, ESC, DEL, …): invisible in a list, and they break logs. */
const CONTROL_CHARACTER = /\p{Cc}/u;
/**
 * Bidirectional formatting characters: the embeddings and overrides (U+202A-U+202E), the isolates
 * (U+2066-U+2069) and the marks (U+200E LRM, U+200F RLM, U+061C ALM). Invisible, and they
 * reorder what is displayed around them: "alice\u202Eecila" shows as another name (a spoofed
 * sender in a list or a log line, as in CVE-2021-42574 for source code).
 */
const BIDI_CONTROL = /[\u202A-\u202E\u2066-\u2069\u200E\u200F\u061C]/;
/**
 * Zero-width characters (U+200B ZWSP, U+200C ZWNJ, U+200D ZWJ, U+2060 WJ, U+FEFF BOM): invisible,
 * so "bob" and "b\u200Bob" would be two users who look the same. (This also refuses emoji joined
 * by ZWJ, such as family emoji, as user ids: a user id is an identifier, not a display name.)
 */
const ZERO_WIDTH = /[\u200B-\u200D\u2060\uFEFF]/;

/**
 * What makes `id` unusable as a user id, as the end of a sentence ("is empty"), or undefined when
 * it is one: 1 to {@link Limits.MAX_USER_ID_LENGTH} code points, well-formed Unicode, no control
 * character, no bidirectional formatting or zero-width character, not only whitespace. The server applies it to a token's `sub` and to every user id
 * in a frame, so a frame can name exactly the users a token can be issued for.
 *
 * Well-formed matters most: a lone surrogate ("vic\ud800") cannot be encoded as UTF-8 and
 * becomes U+FFFD on its way into Redis, so two different ids would share one user's keys (queue,
 * inbox, history).
 */
export function userIdProblem(id: string): string | undefined {
  if (id.length < Limits.MIN_USER_ID_LENGTH) return "is empty";
  if (!id.isWellFormed()) return "is not well-formed Unicode (it has a lone surrogate)";
  // Code points, as the limit is documented: an id of 128 emoji is 256 UTF-16 units.
  if (id.length > Limits.MAX_USER_ID_LENGTH && codePointLength(id) > Limits.MAX_USER_ID_LENGTH) {
    return `is longer than ${Limits.MAX_USER_ID_LENGTH} characters`;
  }
  if (CONTROL_CHARACTER.test(id)) return "contains a control character";
  if (BIDI_CONTROL.test(id)) return "contains a bidirectional formatting character";
  if (ZERO_WIDTH.test(id)) return "contains a zero-width character";
  if (!NON_WHITESPACE.test(id)) return "is only whitespace";
  return undefined;
}

/**
 * What makes `id` unusable as a group id, or undefined when it is one: the rule of user ids
 * ({@link userIdProblem}), since a group id names keys and channels exactly as a user id does.
 */
export function groupIdProblem(id: string): string | undefined {
  return userIdProblem(id);
}

/** Counts Unicode code points without allocating (a surrogate pair is one character). */
export function codePointLength(text: string): number {
  let count = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) i++;
    }
    count++;
  }
  return count;
}

/** Quotes client-supplied text for an error message, cut short so errors stay small. */
function quote(text: string): string {
  return JSON.stringify(text.length > 64 ? `${text.slice(0, 64)}…` : text);
}

function fail(code: ErrorCode, message: string): ParseResult {
  return { ok: false, error: { code, message } };
}
