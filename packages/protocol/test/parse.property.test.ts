import {
  ErrorCode,
  encodeMessage,
  encodeMessageWithoutSeq,
  Limits,
  messageAckFrame,
  parseClientFrame,
  userIdProblem,
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
        validUserId,
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

/**
 * A user id as the protocol defines it, built independently of the parser's own check: 1 to 128
 * code points from the whole Unicode range (fast-check's "binary" unit never makes a lone
 * surrogate), no control character, not only whitespace.
 */
const validUserId = fc
  .string({ unit: "binary", minLength: 1, maxLength: Limits.MAX_USER_ID_LENGTH })
  .filter(
    (id) =>
      /\S/.test(id) &&
      !/\p{Cc}/u.test(id) &&
      !/[\u202A-\u202E\u2066-\u2069\u200E\u200F\u061C\u200B-\u200D\u2060\uFEFF]/.test(id),
  );

/**
 * Invisible characters that change what a user id looks like: the bidirectional embeddings,
 * overrides, isolates and marks, and the zero-width characters. Listed one by one (not as the
 * parser's ranges), so a range mistake in the parser shows.
 */
const BIDI_CONTROLS = [
  "\u202A",
  "\u202B",
  "\u202C",
  "\u202D",
  "\u202E",
  "\u2066",
  "\u2067",
  "\u2068",
  "\u2069",
  "\u200E",
  "\u200F",
  "\u061C",
];
const ZERO_WIDTH = ["\u200B", "\u200C", "\u200D", "\u2060", "\uFEFF"];

/** A lone surrogate, high (D800-DBFF) or low (DC00-DFFF). */
const loneSurrogate = fc
  .integer({ min: 0xd800, max: 0xdfff })
  .map((unit) => String.fromCharCode(unit));

/**
 * Strings that mix well-formed text with lone surrogates: some are well-formed (a high surrogate
 * followed by a low one is a pair), most are not.
 */
const maybeIllFormed = fc
  .array(fc.oneof(fc.string({ unit: "binary", maxLength: 3 }), loneSurrogate), {
    minLength: 1,
    maxLength: 12,
  })
  .map((parts) => parts.join(""));

/** Inserts `surrogate` into `id` at `at` (a UTF-16 index), never between the halves of a pair. */
function insertLone(id: string, surrogate: string, at: number): string {
  const chars = [...id];
  const index = at % (chars.length + 1);
  // A high surrogate right before a low one, or a low one right after a high one, would pair up.
  const text = [...chars.slice(0, index), surrogate, ...chars.slice(index)].join("");
  return text.isWellFormed() ? `${surrogate}${surrogate}` : text;
}

/** What Redis stores for a key or field holding `text`: its UTF-8 bytes (ioredis encodes so). */
const throughRedis = (text: string) => Buffer.from(text, "utf8").toString("utf8");

/** Every frame field that names a user, as [frame type, field, a frame around it]. */
const USER_ID_FIELDS: [string, (id: string) => Record<string, unknown>][] = [
  ["direct_message.to", (id) => ({ type: "direct_message", to: id, content: "hi" })],
  ["typing.to", (id) => ({ type: "typing", to: id, state: "start" })],
  ["get_history.with", (id) => ({ type: "get_history", with: id })],
  ["mark_read.with", (id) => ({ type: "mark_read", with: id, upTo: 1 })],
  ["get_online_users.users", (id) => ({ type: "get_online_users", users: ["bob", id] })],
];

const directMessageWithKey = (clientMsgId: string) => ({
  type: "direct_message",
  to: "bob",
  content: "hi",
  clientMsgId,
});

describe("ids in frames (properties)", () => {
  it.each(USER_ID_FIELDS)("accepts every valid user id as %s", (_field, frameFor) => {
    fc.assert(
      fc.property(validUserId, (id) => {
        expect(parseClientFrame(JSON.stringify(frameFor(id))).ok).toBe(true);
      }),
      { numRuns: 500 },
    );
  });

  it.each(USER_ID_FIELDS)(
    "refuses a user id with a lone surrogate anywhere as %s, with INVALID_FORMAT",
    (_field, frameFor) => {
      fc.assert(
        fc.property(validUserId, loneSurrogate, fc.nat(), (id, surrogate, at) => {
          const bad = insertLone(id, surrogate, at);
          expect(bad.isWellFormed()).toBe(false);
          // JSON.stringify writes the lone surrogate as an escape, as any client's JSON would.
          const result = parseClientFrame(JSON.stringify(frameFor(bad)));
          expect(result.ok ? "ok" : result.error.code).toBe("INVALID_FORMAT");
        }),
        { numRuns: 500 },
      );
    },
  );

  it.each(USER_ID_FIELDS)(
    "accepts as %s only ids that survive UTF-8 unchanged, so two accepted ids never share Redis keys",
    (_field, frameFor) => {
      fc.assert(
        fc.property(maybeIllFormed, (id) => {
          const result = parseClientFrame(JSON.stringify(frameFor(id)));
          if (result.ok) expect(throughRedis(id)).toBe(id);
          if (throughRedis(id) !== id) expect(result.ok).toBe(false);
        }),
        { numRuns: 1000 },
      );
    },
  );

  it("counts a user id's 128 characters in code points, not UTF-16 units", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2 * Limits.MAX_USER_ID_LENGTH }),
        fc.constantFrom("x", "😀", "é", "𝔸"),
        (count, char) => {
          const result = parseClientFrame(
            JSON.stringify({ type: "direct_message", to: char.repeat(count), content: "hi" }),
          );
          expect(result.ok).toBe(count <= Limits.MAX_USER_ID_LENGTH);
        },
      ),
      { numRuns: 300 },
    );
  });

  it("refuses user ids with a control character or of whitespace only", () => {
    const control = fc.oneof(
      fc.integer({ min: 0, max: 0x1f }),
      fc.integer({ min: 0x7f, max: 0x9f }),
    );
    fc.assert(
      fc.property(validUserId, control, fc.nat(), (id, code, at) => {
        const chars = [...id];
        const index = at % (chars.length + 1);
        const bad = [...chars.slice(0, index), String.fromCharCode(code), ...chars.slice(index)];
        const result = parseClientFrame(
          JSON.stringify({ type: "direct_message", to: bad.join(""), content: "hi" }),
        );
        expect(result.ok ? "ok" : result.error.code).toBe("INVALID_FORMAT");
      }),
      { numRuns: 300 },
    );
    for (const blank of [" ", "   ", "\u00a0", "\u3000\u2003", "\ufeff"]) {
      const result = parseClientFrame(JSON.stringify({ type: "get_history", with: blank }));
      expect(result.ok ? "ok" : result.error.code).toBe("INVALID_FORMAT");
    }
  });

  it.each(USER_ID_FIELDS)(
    "refuses a user id with a bidi control or a zero-width character anywhere as %s",
    (_field, frameFor) => {
      fc.assert(
        fc.property(
          validUserId.filter((id) => [...id].length < Limits.MAX_USER_ID_LENGTH),
          fc.constantFrom(...BIDI_CONTROLS, ...ZERO_WIDTH),
          fc.nat(),
          (id, invisible, at) => {
            const chars = [...id];
            const index = at % (chars.length + 1);
            const bad = [...chars.slice(0, index), invisible, ...chars.slice(index)].join("");
            const result = parseClientFrame(JSON.stringify(frameFor(bad)));
            expect(result.ok ? "ok" : result.error.code).toBe("INVALID_FORMAT");
          },
        ),
        { numRuns: 300 },
      );
    },
  );

  it("names what is wrong: a bidi control, or a zero-width character", () => {
    for (const invisible of BIDI_CONTROLS) {
      expect(userIdProblem(`alice${invisible}ecila`)).toBe(
        "contains a bidirectional formatting character",
      );
    }
    for (const invisible of ZERO_WIDTH) {
      expect(userIdProblem(`b${invisible}ob`)).toBe("contains a zero-width character");
    }
    // Neighbours of the ranges stay valid: other format characters, and visible ones.
    for (const fine of ["\u2029x", "a\u206Ab", "\u2061x", "x\u2070", "\u061Bx", "\u200Ax"]) {
      expect(userIdProblem(fine)).toBeUndefined();
    }
  });

  it("refuses a clientMsgId with a lone surrogate, so two such keys never count as one", () => {
    fc.assert(
      fc.property(
        fc.string({ unit: "binary", minLength: 1, maxLength: 40 }),
        loneSurrogate,
        fc.nat(),
        (key, surrogate, at) => {
          const bad = insertLone(key, surrogate, at);
          const result = parseClientFrame(JSON.stringify(directMessageWithKey(bad)));
          expect(result.ok ? "ok" : result.error.code).toBe("INVALID_FORMAT");
        },
      ),
      { numRuns: 500 },
    );
    // The report's pair: both would be stored in Redis as "k\ufffd".
    for (const key of ["k\ud800", "k\udbff"]) {
      const result = parseClientFrame(JSON.stringify(directMessageWithKey(key)));
      expect(result.ok ? "ok" : result.error.code).toBe("INVALID_FORMAT");
    }
  });

  it("accepts as clientMsgId only keys that survive UTF-8 unchanged, of 1 to 64 code points", () => {
    fc.assert(
      fc.property(fc.oneof(maybeIllFormed, fc.string({ unit: "binary", maxLength: 80 })), (key) => {
        const result = parseClientFrame(JSON.stringify(directMessageWithKey(key)));
        const length = [...key].length;
        const valid =
          throughRedis(key) === key && length >= 1 && length <= Limits.MAX_CLIENT_MSG_ID_LENGTH;
        expect(result.ok).toBe(valid);
        if (result.ok && result.command.type === "direct_message") {
          expect(result.command.clientMsgId).toBe(key);
        }
      }),
      { numRuns: 1000 },
    );
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
    ['{"type":"refresh","token":"eyJ.eyJ.sig"}', true],
    ['{"type":"refresh"}', "INVALID_FORMAT"],
    ['{"type":"refresh","token":""}', "INVALID_FORMAT"],
    ['{"type":"refresh","token":42}', "INVALID_FORMAT"],
    [`{"type":"refresh","token":"${"x".repeat(4097)}"}`, "INVALID_FORMAT"],
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
  const userId = validUserId;

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
