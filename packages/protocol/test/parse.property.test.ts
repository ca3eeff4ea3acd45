import {
  ErrorCode,
  encodeMessage,
  encodeMessageWithoutSeq,
  Limits,
  messageAckFrame,
  parseClientFrame,
} from "@mrezhen/protocol";
import fc from "fast-check";
import { describe, expect, it } from "vitest";

const ERROR_CODES = new Set<string>(Object.values(ErrorCode));
const KNOWN_TYPES = ["direct_message", "get_history", "get_online_users", "ping"];

/** Any JSON value, nested a little. */
const jsonValue = fc.jsonValue({ maxDepth: 3 });

/** A value of a field: sometimes right, sometimes wrong type, sometimes edge strings. */
const fieldValue = fc.oneof(
  jsonValue,
  fc.string({ maxLength: 20 }),
  fc.constantFrom("", " ", "\n\t", "bob", "alice", "😀", "x".repeat(129), "x".repeat(5001)),
  fc.integer(),
  fc.double(),
  fc.constant(null),
);

/** Frames shaped like the protocol's: a type (known, unknown or wrong) and random known/unknown fields. */
const structuredFrame = fc.record(
  {
    type: fc.oneof(fc.constantFrom(...KNOWN_TYPES), fc.string({ maxLength: 12 }), jsonValue),
    to: fieldValue,
    content: fieldValue,
    with: fieldValue,
    limit: fc.oneof(fc.integer({ min: -1000, max: 1000 }), fc.double(), fieldValue),
    from: fieldValue,
    extra: jsonValue,
  },
  { requiredKeys: [] },
);

function expectWellFormed(text: string): void {
  const result = parseClientFrame(text);
  if (result.ok) {
    expect(KNOWN_TYPES).toContain(result.command.type);
  } else {
    expect(ERROR_CODES.has(result.error.code)).toBe(true);
    expect(result.error.message.length).toBeGreaterThan(0);
  }
}

describe("parseClientFrame (properties)", () => {
  it("turns every structured frame into a command or a catalogued error, never a throw", () => {
    fc.assert(
      fc.property(structuredFrame, (frame) => expectWellFormed(JSON.stringify(frame))),
      { numRuns: 3000 },
    );
  });

  it("does the same for arbitrary JSON and arbitrary text", () => {
    fc.assert(
      fc.property(jsonValue, (value) => expectWellFormed(JSON.stringify(value))),
      { numRuns: 1000 },
    );
    fc.assert(
      fc.property(fc.string({ maxLength: 200 }), (text) => expectWellFormed(text)),
      { numRuns: 1000 },
    );
    fc.assert(
      fc.property(fc.string({ unit: "binary", maxLength: 100 }), (text) => expectWellFormed(text)),
      { numRuns: 500 },
    );
  });

  it("accepts exactly the valid direct messages, with only the known fields", () => {
    fc.assert(
      fc.property(
        fc.string({ minLength: 1, maxLength: Limits.MAX_USER_ID_LENGTH }),
        fc.string({ minLength: 1, maxLength: 300 }).filter((s) => /\S/.test(s)),
        fieldValue,
        (to, content, junk) => {
          const result = parseClientFrame(
            JSON.stringify({ type: "direct_message", to, content, from: junk, junk }),
          );
          expect(result).toEqual({ ok: true, command: { type: "direct_message", to, content } });
        },
      ),
      { numRuns: 1000 },
    );
  });

  it("always clamps history limits into 1..100", () => {
    fc.assert(
      fc.property(fc.oneof(fc.integer(), fc.double({ noNaN: true })), (limit) => {
        const result = parseClientFrame(
          JSON.stringify({ type: "get_history", with: "bob", limit }),
        );
        // JSON has no Infinity: it serialises as null, which means "default".
        expect(result.ok).toBe(true);
        if (result.ok && result.command.type === "get_history") {
          expect(result.command.limit).toBeGreaterThanOrEqual(1);
          expect(result.command.limit).toBeLessThanOrEqual(100);
          expect(Number.isInteger(result.command.limit)).toBe(true);
        }
      }),
      { numRuns: 1000 },
    );
  });

  it("does not let __proto__ or constructor keys change the result's prototype", () => {
    const result = parseClientFrame(
      '{"type":"ping","__proto__":{"polluted":true},"constructor":{"x":1}}',
    );
    expect(result.ok).toBe(true);
    expect(({} as Record<string, unknown>)["polluted"]).toBeUndefined();
  });
});

describe("parseClientFrame (examples)", () => {
  it.each([
    ['{"type":"direct_message","to":"bob","content":"x"}', true],
    [`{"type":"direct_message","to":"bob","content":"${"x".repeat(5000)}"}`, true],
    [`{"type":"direct_message","to":"bob","content":"${"x".repeat(5001)}"}`, "CONTENT_TOO_LONG"],
    ['{"type":"get_history","with":"bob","limit":1e400}', true],
    ['{"type":"get_history","with":"bob","limit":null}', true],
    ['{"type":"direct_message","to":null,"content":"x"}', "MISSING_RECIPIENT"],
    ['{"type":"direct_message","to":"bob","content":null}', "EMPTY_CONTENT"],
    ['{"type":null}', "MISSING_TYPE"],
    ['{"type":["ping"]}', "INVALID_FORMAT"],
    ["", "INVALID_JSON"],
  ])("%s → %s", (text, expected) => {
    const result = parseClientFrame(text);
    if (expected === true) expect(result.ok).toBe(true);
    else expect(result.ok ? "ok" : result.error.code).toBe(expected);
  });
});

describe("encoders", () => {
  it("produce the same JSON as JSON.stringify for any user ids and keys", () => {
    fc.assert(
      fc.property(fc.string(), fc.option(fc.string(), { nil: undefined }), (to, clientMsgId) => {
        const ack = {
          messageId: "3f1e2a9c-0d4b-4a7e-9f51-2c8b6d0e7a11",
          to,
          timestamp: "2026-11-26T03:00:00.000Z",
          status: "queued" as const,
          seq: 7,
          position: 12,
          clientMsgId,
        };
        expect(JSON.parse(messageAckFrame(ack))).toEqual(
          JSON.parse(JSON.stringify({ type: "message_ack", ...ack })),
        );
      }),
      { numRuns: 500 },
    );
  });
});

describe("encodeMessage", () => {
  it("is JSON.stringify of the message, with seq last", () => {
    fc.assert(
      fc.property(
        fc.string(),
        fc.string(),
        fc.string(),
        fc.option(fc.string(), { nil: undefined }),
        fc.nat(),
        (from, to, content, clientMsgId, seq) => {
          const message = {
            id: "3f1e2a9c-0d4b-4a7e-9f51-2c8b6d0e7a11",
            from,
            to,
            content,
            timestamp: "2026-11-26T03:00:00.000Z",
            ...(clientMsgId === undefined ? {} : { clientMsgId }),
            seq,
          };
          const text = encodeMessage(message);
          expect(text).toBe(JSON.stringify(message));
          expect(encodeMessageWithoutSeq(message)).toBe(
            `${text.slice(0, text.lastIndexOf(',"seq"'))}}`,
          );
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe("get_online_users with users", () => {
  const userId = fc.string({ minLength: 1, maxLength: Limits.MAX_USER_ID_LENGTH });

  it("accepts 1 to ONLINE_QUERY_MAX_USERS user ids, asked once each, in order", () => {
    fc.assert(
      fc.property(
        fc.array(userId, { minLength: 1, maxLength: Limits.ONLINE_QUERY_MAX_USERS }),
        (users) => {
          const result = parseClientFrame(JSON.stringify({ type: "get_online_users", users }));
          expect(result).toEqual({
            ok: true,
            command: { type: "get_online_users", users: [...new Set(users)] },
          });
        },
      ),
      { numRuns: 300 },
    );
  });

  it("refuses any other users value with INVALID_FORMAT", () => {
    const bad = fc.oneof(
      fc.constant([]),
      fc.array(userId, { minLength: Limits.ONLINE_QUERY_MAX_USERS + 1, maxLength: 150 }),
      fc
        .array(fieldValue, { minLength: 1, maxLength: 5 })
        .filter(
          (users) =>
            !users.every(
              (user) =>
                typeof user === "string" &&
                user.length >= 1 &&
                user.length <= Limits.MAX_USER_ID_LENGTH,
            ),
        ),
      fc.oneof(fc.string(), fc.integer(), fc.dictionary(fc.string(), fc.string())),
    );
    fc.assert(
      fc.property(bad, (users) => {
        const result = parseClientFrame(JSON.stringify({ type: "get_online_users", users }));
        expect(result).toMatchObject({ ok: false, error: { code: ErrorCode.INVALID_FORMAT } });
      }),
      { numRuns: 300 },
    );
  });
});
