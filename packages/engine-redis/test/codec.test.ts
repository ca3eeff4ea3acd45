/**
 * The channel codecs. User events with the connection ids a node really builds
 * (`<NODE_ID>.<n in base 36>`, apps/server/src/http/connections.ts) from hostile node ids: every
 * id the server's NODE_ID rule allows survives the `|`-separated payload, and one with a `|`,
 * which would not, is refused by the engine before it connects. Node-channel events (a group's
 * entries) with any user and group id the protocol accepts. No Redis needed.
 */
import type { UserEvent } from "@mrezhen/engine";
import { userIdProblem } from "@mrezhen/protocol";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  decodeNodeEvent,
  decodeUserEvent,
  encodeNodeEntry,
  encodeNodeFrame,
} from "../src/codec.js";
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

/** Any id the protocol accepts as a user or group id: `|`, spaces, emoji and all. */
const anyId = fc
  .string({ unit: "grapheme", minLength: 1, maxLength: 12 })
  .filter((id) => userIdProblem(id) === undefined);

describe("node-channel events (a group's entry or frame for some of a node's members)", () => {
  it("hand each member its own event, for any ids the protocol accepts", () => {
    fc.assert(
      fc.property(
        fc.uuid(),
        anyId,
        fc.uniqueArray(anyId, { minLength: 1, maxLength: 8 }),
        fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
        nodeId,
        fc.string({ unit: "binary" }),
        (messageId, groupId, users, firstPosition, node, text) => {
          const messageJson = JSON.stringify({ id: messageId, content: text });
          // The first member is the sender, with the connection its copy skips.
          const members = users.map((userId, i) => ({
            userId,
            position: firstPosition - i,
            excludeConnId: i === 0 ? `${node}.1` : undefined,
          }));
          const delivered: [string, UserEvent][] = [];
          const payload = encodeNodeEntry({ messageId, groupId, members, messageJson });
          const ok = decodeNodeEvent(payload, (user, event) => delivered.push([user, event]));
          expect(ok).toBe(true);
          expect(delivered).toEqual(
            members.map(({ userId, position, excludeConnId }) => [
              userId,
              {
                kind: "message",
                messageId,
                messageJson,
                position,
                groupId,
                ...(excludeConnId === undefined ? {} : { excludeConnId }),
              },
            ]),
          );
        },
      ),
    );
  });

  it("hand a frame to each user listed", () => {
    fc.assert(
      fc.property(fc.uniqueArray(anyId, { maxLength: 8 }), (users) => {
        const frame = JSON.stringify({ type: "typing", from: users[0] ?? "x" });
        const delivered: [string, UserEvent][] = [];
        expect(
          decodeNodeEvent(encodeNodeFrame(users, frame), (u, e) => delivered.push([u, e])),
        ).toBe(true);
        expect(delivered).toEqual(users.map((user) => [user, { kind: "frame", frame }]));
      }),
    );
  });

  it("refuse a payload cut short or of another kind, and deliver nothing from it", () => {
    const payload = encodeNodeEntry({
      messageId: "m-1",
      groupId: "g",
      members: [
        { userId: "bob", position: 4, excludeConnId: undefined },
        { userId: "carol", position: 9, excludeConnId: undefined },
      ],
      messageJson: '{"content":"hi"}',
    });
    const body = payload.indexOf("{");
    const delivered: string[] = [];
    for (let cut = 0; cut < body - 1; cut++) {
      expect(decodeNodeEvent(payload.slice(0, cut), (user) => delivered.push(user))).toBe(false);
    }
    expect(decodeNodeEvent("X|1\nbob\n{}", (user) => delivered.push(user))).toBe(false);
    expect(decodeNodeEvent("G|m|x|g\n1\nbob\n{}", (user) => delivered.push(user))).toBe(false);
    expect(delivered).toEqual([]);
  });
});
