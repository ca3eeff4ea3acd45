/**
 * The payload of user-channel events. The scripts (scripts.ts) and Broker.publishFrame write it;
 * every node that holds the user decodes it once per event, so it is a flat, splittable string
 * rather than JSON. Two kinds, told apart by the leading tag:
 *
 *     m|<position>|<excludeConnId or empty>|<messageId>|<messageJson>   a stored message
 *     f|<frame>                                                         a ready-to-send frame
 *
 * The first four fields of a message event never contain `|` (positions are integers, ids are
 * node-generated UUIDs and connection ids), so four `indexOf` calls split it, and the message
 * text, which may contain anything, is the untouched tail: it goes into frames as-is, without a
 * parse and a stringify. A frame event (receipts, typing) is the frame text after the tag.
 */
import type { UserEvent } from "@mrezhen/engine";

/** Tag of a frame event; the Lua scripts that publish receipts write the same two bytes. */
export const FRAME_TAG = "f|";

/** The payload of a frame event (see the format above). */
export function encodeFrameEvent(frame: string): string {
  return FRAME_TAG + frame;
}

/** Decodes a user-channel payload; undefined when it is not one this version understands. */
export function decodeUserEvent(payload: string): UserEvent | undefined {
  if (payload.startsWith(FRAME_TAG))
    return { kind: "frame", frame: payload.slice(FRAME_TAG.length) };
  if (!payload.startsWith("m|")) return undefined;
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
