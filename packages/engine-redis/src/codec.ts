/**
 * The payload of user-channel events. The append script (scripts.ts) writes it; every node that
 * holds the user decodes it once per event, so it is a flat, splittable string rather than JSON:
 *
 *     m|<position>|<excludeConnId or empty>|<messageId>|<messageJson>
 *
 * The first four fields never contain `|` (positions are integers, ids are node-generated UUIDs
 * and connection ids), so four `indexOf` calls split it, and the message text, which may contain
 * anything, is the untouched tail: it goes into frames as-is, without a parse and a stringify.
 * The leading kind tag leaves room for other event kinds (receipts, typing) later.
 */
import type { UserEvent } from "@mrezhen/engine";

/** Decodes a user-channel payload; undefined when it is not one this version understands. */
export function decodeUserEvent(payload: string): UserEvent | undefined {
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
