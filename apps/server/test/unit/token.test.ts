import { createHmac } from "node:crypto";
import { SignJWT } from "jose";
import { describe, expect, it } from "vitest";
import { AuthError, TokenVerifier } from "../../src/auth/token.js";

// Tokens are minted with jose, an implementation independent of the verifier's (fast-jwt).
const SECRET = "unit-test-secret-of-at-least-32-chars";
const verifier = new TokenVerifier(SECRET, "mrezhen");
const now = () => Math.floor(Date.now() / 1000);
const base64url = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");

function mint(
  claims: Record<string, unknown>,
  options: { secret?: string; alg?: string; header?: Record<string, unknown> } = {},
): Promise<string> {
  return new SignJWT(claims)
    .setProtectedHeader({ alg: options.alg ?? "HS256", ...options.header })
    .sign(new TextEncoder().encode(options.secret ?? SECRET));
}

/** A token signed with SECRET by node:crypto, for headers jose refuses to sign. */
function signedByHand(header: unknown, claims: unknown): string {
  const input = `${base64url(header)}.${base64url(claims)}`;
  return `${input}.${createHmac("sha256", SECRET).update(input).digest("base64url")}`;
}

const valid = { sub: "alice", iss: "mrezhen", exp: now() + 3600 };

function reason(token: string | undefined): string {
  try {
    verifier.verify(token);
  } catch (error) {
    if (error instanceof AuthError) return error.reason;
    throw error;
  }
  throw new Error("the token was accepted");
}

describe("TokenVerifier", () => {
  it("accepts a valid token and returns who it is for, with the display name and expiry", async () => {
    const exp = now() + 60;
    const token = await mint({ ...valid, exp, name: "Alice" });
    expect(verifier.verify(token)).toEqual({
      userId: "alice",
      name: "Alice",
      expiresAt: exp * 1000,
    });
  });

  it.each([
    ["128 emoji (256 UTF-16 units)", "😀".repeat(128)],
    ["128 ASCII characters", "x".repeat(128)],
    ["U+FFFD itself (a well-formed character)", "vic\ufffd"],
    ["a name with inner spaces and a pair of surrogates", " ali ce 😀 "],
  ])("accepts a sub of %s", async (_name, sub) => {
    expect(verifier.verify(await mint({ ...valid, sub })).userId).toBe(sub);
  });

  it.each<[string, () => Promise<string | undefined>, string]>([
    ["no token", async () => undefined, "missing token"],
    ["a token over 4096 characters", async () => "x".repeat(4097), "token too long"],
    ["not a JWT", async () => "not-a-jwt", "malformed token"],
    [
      "another secret",
      () => mint(valid, { secret: "another-secret-of-at-least-32-chars" }),
      "bad signature",
    ],
    ["a cut-off signature", async () => (await mint(valid)).slice(0, -4), "bad signature"],
    ["HS512", () => mint(valid, { alg: "HS512" }), "algorithm not allowed"],
    ["alg none", async () => `${base64url({ alg: "none" })}.${base64url(valid)}.`, "bad signature"],
    ["an expired exp", () => mint({ ...valid, exp: now() - 10 }), "token expired"],
    ["an nbf in the future", () => mint({ ...valid, nbf: now() + 60 }), "token not yet valid"],
    ["no exp", () => mint({ sub: "alice", iss: "mrezhen" }), "missing claim exp"],
    ["an exp that is not a number", () => mint({ ...valid, exp: "tomorrow" }), "invalid claim exp"],
    ["no iss", () => mint({ sub: "alice", exp: now() + 60 }), "missing claim iss"],
    ["another issuer", () => mint({ ...valid, iss: "someone-else" }), "invalid claim iss"],
    ["no sub", () => mint({ iss: "mrezhen", exp: now() + 60 }), "missing claim sub"],
    ["a sub that is not a string", () => mint({ ...valid, sub: 42 }), "invalid claim sub"],
    ["an empty sub", () => mint({ ...valid, sub: "" }), "subject is empty"],
    [
      "a sub over 128 characters",
      () => mint({ ...valid, sub: "x".repeat(129) }),
      "subject is longer than 128 characters",
    ],
    [
      "a sub of 129 emoji (counted as characters, not UTF-16 units)",
      () => mint({ ...valid, sub: "😀".repeat(129) }),
      "subject is longer than 128 characters",
    ],
    // JSON carries a lone surrogate as an escape ("vic\ud800"), which JSON.parse turns back
    // into one: such a sub reaches the verifier, and Redis would store it as "vic\ufffd".
    [
      "a sub with a lone high surrogate",
      () => mint({ ...valid, sub: "vic\ud800" }),
      "subject is not well-formed Unicode (it has a lone surrogate)",
    ],
    [
      "a sub with a lone low surrogate",
      () => mint({ ...valid, sub: "\udc00vic" }),
      "subject is not well-formed Unicode (it has a lone surrogate)",
    ],
    [
      "a sub with a reversed surrogate pair",
      () => mint({ ...valid, sub: "\ude00\ud83d" }),
      "subject is not well-formed Unicode (it has a lone surrogate)",
    ],
    [
      "a sub with NUL",
      () => mint({ ...valid, sub: "ali\u0000ce" }),
      "subject contains a control character",
    ],
    [
      "a sub with a newline",
      () => mint({ ...valid, sub: "alice\n" }),
      "subject contains a control character",
    ],
    [
      "a sub with DEL",
      () => mint({ ...valid, sub: "\u007f" }),
      "subject contains a control character",
    ],
    [
      "a sub with a C1 control",
      () => mint({ ...valid, sub: "a\u0085b" }),
      "subject contains a control character",
    ],
    ["a sub of spaces", () => mint({ ...valid, sub: "   " }), "subject is only whitespace"],
    [
      "a sub of Unicode spaces",
      () => mint({ ...valid, sub: "\u00a0\u3000\u2003" }),
      "subject is only whitespace",
    ],
    [
      "an unknown critical header",
      async () => signedByHand({ alg: "HS256", crit: ["exp-check"], "exp-check": true }, valid),
      "unsupported critical header",
    ],
  ])("refuses %s, with a reason safe to show", async (_name, makeToken, expected) => {
    expect(reason(await makeToken())).toBe(expected);
  });
});
