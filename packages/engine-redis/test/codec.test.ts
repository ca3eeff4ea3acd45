/**
 * The user-event codec with the connection ids a node really builds (`<NODE_ID>.<n in base 36>`,
 * apps/server/src/http/connections.ts) from hostile node ids: every id the server's NODE_ID rule
 * allows survives the `|`-separated payload, and one with a `|`, which would not, is refused by
 * the engine before it connects. No Redis needed.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { decodeUserEvent } from "../src/codec.js";
import { createRedisEngine } from "../src/index.js";

/** The payload APPEND publishes to the sender's other devices (scripts.ts, "Event payload"). */
function messageEvent(position: number, excludeConnId: string, id: string, json: string): string {
  return `m|${position}|${excludeConnId}|${id}|${json}`;
}

/** NODE_ID's alphabet (apps/server/src/config.ts): 1 to 64 of A-Z, a-z, 0-9, ".", "_", "-". */
const nodeId = fc.stringMatching(/^[A-Za-z0-9._-]{1,64}$/);

describe("user events with the node's connection ids", () => {
  it("decode to the exact connection id, message id and text for every allowed NODE_ID", () => {
    fc.assert(
      fc.property(
        nodeId,
        fc.nat(),
        fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
        fc.uuid(),
        // Message text may contain anything, `|` above all: it is the untouched tail.
        fc.string({ unit: "binary" }),
        (node, sequence, position, id, text) => {
          const connId = `${node}.${(sequence + 1).toString(36)}`;
          const json = JSON.stringify({ id, content: `${text}|${text}` });
          expect(decodeUserEvent(messageEvent(position, connId, id, json))).toEqual({
            kind: "message",
            position,
            excludeConnId: connId,
            messageId: id,
            messageJson: json,
          });
        },
      ),
    );
  });

  it("would be corrupted by a `|` in the node id: why NODE_ID may not contain one", () => {
    const decoded = decodeUserEvent(messageEvent(7, "eu|west.1", "m-1", '{"content":"hi"}'));
    // The copy would skip a connection "eu" that does not exist (so the sending device gets its
    // own message back), under the message id "west.1", with a body that is not JSON.
    expect(decoded).toMatchObject({ excludeConnId: "eu", messageId: "west.1" });
  });

  it("refuses a node id with a `|` before connecting to anything", async () => {
    await expect(
      createRedisEngine({
        // Nothing listens there: the refusal must come first, from the options alone.
        url: "redis://127.0.0.1:1",
        keyPrefix: "codec-test:",
        nodeId: "eu|west",
        rateLimit: { limit: 1, windowMs: 1000 },
      }),
    ).rejects.toThrow(/nodeId "eu\|west" contains "\|"/);
  });
});
