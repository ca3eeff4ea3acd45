/**
 * The payloads of the engine's channels.
 *
 * ## User channels
 *
 * The payload of user-channel events. The scripts (scripts.ts) and Broker.publishFrame write it;
 * every node that holds the user decodes it once per event, so it is a flat, splittable string
 * rather than JSON. Two kinds, told apart by the leading tag:
 *
 *     m|<position>|<excludeConnId or empty>|<messageId>|<messageJson>   a stored message
 *     f|<frame>                                                         a ready-to-send frame
 *     c|<JSON of a ControlEvent without its kind>                       a control order
 *
 * The first four fields of a message event never contain `|` (positions are integers, ids are
 * node-generated UUIDs and connection ids), so four `indexOf` calls split it, and the message
 * text, which may contain anything, is the untouched tail: it goes into frames as-is, without a
 * parse and a stringify. A frame event (receipts, typing) is the frame text after the tag.
 *
 * ## Node channels
 *
 * What a group script (groups.ts) sends live to its members: one event per node that holds any
 * of them, naming the members it is for. Two kinds:
 *
 *     G|<messageId>|<k>|<groupId>\n<position 1>\n<user 1>\n…<position k>\n<user k>\n<messageJson>
 *     F|<k>\n<user 1>\n…<user k>\n<frame>
 *
 * `G` is a group entry (message or membership event), each member with its own inbox position;
 * the sender's own line is `<position>|<excludeConnId>`: its other connections get the copy,
 * the sending one gets its ack. `F` is a ready-to-send frame (typing, receipts). User and group
 * ids never contain a control character (protocol `userIdProblem`) and JSON text never contains
 * a raw line feed, so `\n` splits them; message ids and counts never contain `|`.
 *
 * ## The broadcast channel
 *
 * Presence deltas, published by the presence scripts (scripts.ts) when a user's membership of
 * the online set changes; every node decodes every one of them:
 *
 *     p|<version>|on|<userId>     the user came online; the set is now at <version>
 *     p|<version>|off|<userId>    the user went offline
 *
 * The version (the `presence:version` counter, bumped by each change) never contains `|`; the
 * user id, which may contain anything, is the tail. A delta is O(1) whatever the number of
 * online users: nodes keep the set themselves (presence-mirror.ts) and build the protocol's
 * presence frame, which lists every online user, only when a connection of theirs wants one.
 */
import { Buffer } from "node:buffer";
import type { ControlEvent, UserEvent } from "@mrezhen/engine";

/** A change of the online set, as the presence scripts announce it. */
export interface PresenceDelta {
  /** The set's version right after this change: consecutive changes have consecutive versions. */
  readonly version: number;
  readonly userId: string;
  readonly status: "online" | "offline";
}

/** Tag of a frame event; the Lua scripts that publish receipts write the same two bytes. */
export const FRAME_TAG = "f|";

/** The payload of a frame event (see the format above). */
export function encodeFrameEvent(frame: string): string {
  return FRAME_TAG + frame;
}

/**
 * Tag of a control event (the server API's disconnect and revoke). Rare, so plain JSON: an older
 * node that does not know the tag skips it (and logs once), as for any unknown kind.
 */
export const CONTROL_TAG = "c|";

export function encodeControlEvent(event: ControlEvent): string {
  const { kind: _kind, ...fields } = event;
  return CONTROL_TAG + JSON.stringify(fields);
}

function decodeControlEvent(json: string): ControlEvent | undefined {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch {
    return undefined;
  }
  if (typeof value !== "object" || value === null) return undefined;
  const { action, code, reason, before } = value as Record<string, unknown>;
  if (action !== "disconnect" && action !== "revoke") return undefined;
  return {
    kind: "control",
    action,
    ...(typeof code === "number" ? { code } : {}),
    ...(typeof reason === "string" ? { reason } : {}),
    ...(typeof before === "number" ? { before } : {}),
  };
}

/** Decodes a user-channel payload; undefined when it is not one this version understands. */
export function decodeUserEvent(payload: string): UserEvent | undefined {
  if (payload.startsWith(FRAME_TAG))
    return { kind: "frame", frame: payload.slice(FRAME_TAG.length) };
  if (payload.startsWith(CONTROL_TAG)) return decodeControlEvent(payload.slice(CONTROL_TAG.length));
  if (!payload.startsWith("m|"))
    return payload.startsWith("g|") ? decodeGroupEvent(payload) : undefined;
  const afterPosition = payload.indexOf("|", 2);
  const afterExclude = afterPosition < 0 ? -1 : payload.indexOf("|", afterPosition + 1);
  const afterId = afterExclude < 0 ? -1 : payload.indexOf("|", afterExclude + 1);
  if (afterId < 0) return undefined;
  const position = Number(payload.slice(2, afterPosition));
  if (!Number.isSafeInteger(position)) return undefined;
  const messageId = payload.slice(afterExclude + 1, afterId);
  const messageJson = payload.slice(afterId + 1);
  return afterExclude === afterPosition + 1
    ? { kind: "message", messageId, messageJson, position }
    : {
        kind: "message",
        messageId,
        messageJson,
        position,
        excludeConnId: payload.slice(afterPosition + 1, afterExclude),
      };
}

/**
 * A group's entry for one member (groups.ts):
 * `g|<position>|<excludeConnId or empty>|<messageId>|<groupId length>|<groupId><messageJson>`;
 * the length (in UTF-8 bytes, as the script counts) splits the group id, which may contain anything, from the text.
 */
function decodeGroupEvent(payload: string): UserEvent | undefined {
  const afterPosition = payload.indexOf("|", 2);
  const afterExclude = afterPosition < 0 ? -1 : payload.indexOf("|", afterPosition + 1);
  const afterId = afterExclude < 0 ? -1 : payload.indexOf("|", afterExclude + 1);
  const afterLength = afterId < 0 ? -1 : payload.indexOf("|", afterId + 1);
  if (afterLength < 0) return undefined;
  const position = Number(payload.slice(2, afterPosition));
  const length = Number(payload.slice(afterId + 1, afterLength));
  if (!Number.isSafeInteger(position) || !Number.isSafeInteger(length)) return undefined;
  const rest = payload.slice(afterLength + 1);
  // The script counts the id's UTF-8 bytes: take that many bytes, not characters.
  const bytes = Buffer.from(rest);
  const groupId = bytes.subarray(0, length).toString();
  const messageJson = bytes.subarray(length).toString();
  const exclude = payload.slice(afterPosition + 1, afterExclude);
  return {
    kind: "message",
    messageId: payload.slice(afterExclude + 1, afterId),
    messageJson,
    position,
    groupId,
    ...(exclude === "" ? {} : { excludeConnId: exclude }),
  };
}

/** One member's line pair of a node-channel group entry. */
interface NodeEntryMember {
  readonly userId: string;
  readonly position: number;
  readonly excludeConnId: string | undefined;
}

/**
 * Decodes a node-channel payload (see the format above) and hands each member's event to
 * `deliver`, in the order listed; false when the payload is not one this version understands
 * (then nothing was delivered). The text is shared by every member's event, not copied.
 */
export function decodeNodeEvent(
  payload: string,
  deliver: (userId: string, event: UserEvent) => void,
): boolean {
  if (payload.startsWith("F|")) return decodeNodeFrame(payload, deliver);
  if (!payload.startsWith("G|")) return false;
  const afterId = payload.indexOf("|", 2);
  const afterCount = afterId < 0 ? -1 : payload.indexOf("|", afterId + 1);
  const afterGroup = afterCount < 0 ? -1 : payload.indexOf("\n", afterCount + 1);
  if (afterGroup < 0) return false;
  const count = Number(payload.slice(afterId + 1, afterCount));
  if (!Number.isSafeInteger(count) || count < 0) return false;
  const members: NodeEntryMember[] = [];
  let at = afterGroup + 1;
  for (let i = 0; i < count; i++) {
    const afterPosition = payload.indexOf("\n", at);
    const afterUser = afterPosition < 0 ? -1 : payload.indexOf("\n", afterPosition + 1);
    if (afterUser < 0) return false;
    // `<position>` or, for the sender's copy, `<position>|<its sending connection>`.
    const bar = payload.indexOf("|", at);
    const excludes = bar >= 0 && bar < afterPosition;
    const position = Number(payload.slice(at, excludes ? bar : afterPosition));
    if (!Number.isSafeInteger(position)) return false;
    members.push({
      userId: payload.slice(afterPosition + 1, afterUser),
      position,
      excludeConnId: excludes ? payload.slice(bar + 1, afterPosition) : undefined,
    });
    at = afterUser + 1;
  }
  const messageId = payload.slice(2, afterId);
  const groupId = payload.slice(afterCount + 1, afterGroup);
  const messageJson = payload.slice(at);
  for (const { userId, position, excludeConnId } of members) {
    deliver(
      userId,
      excludeConnId === undefined
        ? { kind: "message", messageId, messageJson, position, groupId }
        : { kind: "message", messageId, messageJson, position, groupId, excludeConnId },
    );
  }
  return true;
}

function decodeNodeFrame(
  payload: string,
  deliver: (userId: string, event: UserEvent) => void,
): boolean {
  const afterCount = payload.indexOf("\n", 2);
  if (afterCount < 0) return false;
  const count = Number(payload.slice(2, afterCount));
  if (!Number.isSafeInteger(count) || count < 0) return false;
  const users: string[] = [];
  let at = afterCount + 1;
  for (let i = 0; i < count; i++) {
    const end = payload.indexOf("\n", at);
    if (end < 0) return false;
    users.push(payload.slice(at, end));
    at = end + 1;
  }
  const event: UserEvent = { kind: "frame", frame: payload.slice(at) };
  for (const user of users) deliver(user, event);
  return true;
}

/** The payload a group script publishes on a node channel (for tests; the scripts write it). */
export function encodeNodeEntry(entry: {
  readonly messageId: string;
  readonly groupId: string;
  readonly members: readonly NodeEntryMember[];
  readonly messageJson: string;
}): string {
  const lines = entry.members
    .map(({ userId, position, excludeConnId }) =>
      excludeConnId === undefined
        ? `${position}\n${userId}\n`
        : `${position}|${excludeConnId}\n${userId}\n`,
    )
    .join("");
  return `G|${entry.messageId}|${entry.members.length}|${entry.groupId}\n${lines}${entry.messageJson}`;
}

/** The payload of a frame for some of a node's users (for tests; the scripts write it). */
export function encodeNodeFrame(userIds: readonly string[], frame: string): string {
  return `F|${userIds.length}\n${userIds.map((id) => `${id}\n`).join("")}${frame}`;
}

const ON = "on|";
const OFF = "off|";

/** Decodes a broadcast-channel payload; undefined when it is not one this version understands. */
export function decodePresenceDelta(payload: string): PresenceDelta | undefined {
  if (!payload.startsWith("p|")) return undefined;
  const afterVersion = payload.indexOf("|", 2);
  if (afterVersion < 0) return undefined;
  const version = Number(payload.slice(2, afterVersion));
  if (!Number.isSafeInteger(version) || version < 1) return undefined;
  if (payload.startsWith(ON, afterVersion + 1)) {
    return { version, status: "online", userId: payload.slice(afterVersion + 1 + ON.length) };
  }
  if (payload.startsWith(OFF, afterVersion + 1)) {
    return { version, status: "offline", userId: payload.slice(afterVersion + 1 + OFF.length) };
  }
  return undefined;
}

/** The payload the scripts publish for `delta` (for tests; the scripts write it themselves). */
export function encodePresenceDelta(delta: PresenceDelta): string {
  return `p|${delta.version}|${delta.status === "online" ? ON : OFF}${delta.userId}`;
}
