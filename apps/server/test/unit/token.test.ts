import { createHmac, generateKeyPairSync, type KeyObject } from "node:crypto";
import { SignJWT } from "jose";
import { describe, expect, it } from "vitest";
import { AuthError, TokenVerifier } from "../../src/auth/token.js";
import { loadConfig } from "../../src/config.js";

// Tokens are minted with jose's SignJWT or by hand with node:crypto, never through the verifier.
const SECRET = "unit-test-secret-of-at-least-32-chars";
const verifier = await TokenVerifier.create(loadConfig({ JWT_SECRET: SECRET }).jwt);
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

/** A token signed with `secret` by node:crypto, for headers jose refuses to sign. */
function signedByHand(header: unknown, claims: unknown, secret: string | Buffer = SECRET): string {
  const input = `${base64url(header)}.${base64url(claims)}`;
  return `${input}.${createHmac("sha256", secret).update(input).digest("base64url")}`;
}

const valid = { sub: "alice", iss: "mrezhen", exp: now() + 3600 };

async function reasonFrom(subject: TokenVerifier, token: string | undefined): Promise<string> {
  try {
    await subject.verify(token);
  } catch (error) {
    if (error instanceof AuthError) return error.reason;
    throw error;
  }
  throw new Error("the token was accepted");
}
const reason = (token: string | undefined) => reasonFrom(verifier, token);

/** The same token with the last character of its signature changed to `replacement`. */
function lastCharacter(token: string, replacement: string): string {
  return `${token.slice(0, -1)}${replacement}`;
}

describe("TokenVerifier (HS256)", () => {
  it("accepts a valid token and returns who it is for, with the display name and expiry", async () => {
    const exp = now() + 60;
    const token = await mint({ ...valid, exp, name: "Alice" });
    expect(await verifier.verify(token)).toEqual({
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
    expect((await verifier.verify(await mint({ ...valid, sub }))).userId).toBe(sub);
  });

  it("accepts an iat a few seconds ahead of our clock (the issuer's clock may be)", async () => {
    expect((await verifier.verify(await mint({ ...valid, iat: now() + 3 }))).userId).toBe("alice");
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
    [
      "alg none with a signature",
      async () => `${base64url({ alg: "none" })}.${base64url(valid)}.AAAA`,
      "algorithm not allowed",
    ],
    ["an expired exp", () => mint({ ...valid, exp: now() - 10 }), "token expired"],
    // jose's clock tolerance would let this one through; the node's deadline is exact.
    ["an exp one second ago", () => mint({ ...valid, exp: now() - 1 }), "token expired"],
    ["an nbf in the future", () => mint({ ...valid, nbf: now() + 60 }), "token not yet valid"],
    [
      "an iat in the future",
      () => mint({ ...valid, iat: now() + 60 }),
      "token issued in the future",
    ],
    ["an iat that is not a number", () => mint({ ...valid, iat: "now" }), "invalid claim iat"],
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
    [
      "a sub with a right-to-left override",
      () => mint({ ...valid, sub: "alice\u202Eecila" }),
      "subject contains a bidirectional formatting character",
    ],
    [
      "a sub with a bidi isolate",
      () => mint({ ...valid, sub: "\u2067bob" }),
      "subject contains a bidirectional formatting character",
    ],
    [
      "a sub with a zero-width space",
      () => mint({ ...valid, sub: "b\u200Bob" }),
      "subject contains a zero-width character",
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
    [
      // jose implements b64 (RFC 7797); the node implements no extension, and says so.
      "a critical header jose would understand (b64)",
      async () => signedByHand({ alg: "HS256", crit: ["b64"], b64: true }, valid),
      "unsupported critical header",
    ],
    [
      "padding in the signature",
      async () => `${signedByHand({ alg: "HS256" }, valid)}=`,
      "malformed token",
    ],
  ])("refuses %s, with a reason safe to show", async (_name, makeToken, expected) => {
    expect(await reason(await makeToken())).toBe(expected);
  });

  it("refuses every other spelling of a valid signature (canonical base64url only)", async () => {
    // 32 bytes are 43 base64url characters: the last carries 4 bits of the MAC and 2 unused
    // bits, so 3 other characters decode (leniently) to the very same MAC.
    const token = signedByHand({ alg: "HS256", typ: "JWT" }, valid);
    await expect(verifier.verify(token)).resolves.toMatchObject({ userId: "alice" });
    const last = token.at(-1) as string;
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const value = alphabet.indexOf(last);
    const twins = [1, 2, 3].map((low) => alphabet.charAt((value & ~3) | ((value + low) & 3)));
    for (const twin of twins) {
      expect(twin).not.toBe(last);
      expect(Buffer.from(lastCharacter(token, twin).split(".")[2] as string, "base64url")).toEqual(
        Buffer.from(token.split(".")[2] as string, "base64url"),
      );
      expect(await reason(lastCharacter(token, twin))).toBe("bad signature");
    }
  });

  it("never fetches or uses a key named by the token (jwk, jku, x5u headers)", async () => {
    // Signed with an attacker's secret, which the header "offers"; the node uses its own key.
    const attacker = "attacker-secret-of-at-least-32-chars!!";
    const jwk = { kty: "oct", k: Buffer.from(attacker).toString("base64url") };
    for (const header of [
      { alg: "HS256", jwk },
      { alg: "HS256", jku: "http://127.0.0.1:9/jwks.json" },
      { alg: "HS256", x5u: "http://127.0.0.1:9/cert.pem" },
    ]) {
      expect(await reason(signedByHand(header, valid, attacker))).toBe("bad signature");
    }
  });
});

/** An RSA, EC or Ed25519 key pair, the public half as PEM text. */
function pair(type: "rsa" | "ec" | "ed25519"): { privateKey: KeyObject; pem: string } {
  const { privateKey, publicKey } =
    type === "rsa"
      ? generateKeyPairSync("rsa", { modulusLength: 2048 })
      : type === "ec"
        ? generateKeyPairSync("ec", { namedCurve: "P-256" })
        : generateKeyPairSync("ed25519");
  return { privateKey, pem: publicKey.export({ type: "spki", format: "pem" }).toString() };
}

describe("TokenVerifier (JWT_PUBLIC_KEY)", () => {
  const rsa = pair("rsa");
  const ec = pair("ec");
  const ed = pair("ed25519");

  it.each([
    ["RSA", "RS256", rsa],
    ["EC P-256", "ES256", ec],
    ["Ed25519", "EdDSA", ed],
  ] as const)(
    "accepts a token signed by the %s key (%s) and only that algorithm",
    async (_name, alg, keys) => {
      const config = loadConfig({ JWT_PUBLIC_KEY: keys.pem }).jwt;
      expect(config.algorithms).toEqual([alg]);
      const subject = await TokenVerifier.create(config);
      const token = await new SignJWT({ ...valid })
        .setProtectedHeader({ alg })
        .sign(keys.privateKey);
      expect((await subject.verify(token)).userId).toBe("alice");
      // The development secret is not a key source once another one is configured.
      expect(
        await reasonFrom(
          subject,
          await mint(valid, { secret: "mrezhen-dev-secret-change-in-production" }),
        ),
      ).toBe("algorithm not allowed");
    },
  );

  it("takes a PEM written on one line with \\n escapes, as environment files hold it", async () => {
    const subject = await TokenVerifier.create(
      loadConfig({ JWT_PUBLIC_KEY: ec.pem.replace(/\n/g, "\\n") }).jwt,
    );
    const token = await new SignJWT({ ...valid })
      .setProtectedHeader({ alg: "ES256" })
      .sign(ec.privateKey);
    expect((await subject.verify(token)).userId).toBe("alice");
  });

  it("refuses HS256 signed with the public key's text as the secret (algorithm confusion)", async () => {
    const token = signedByHand({ alg: "HS256", typ: "JWT" }, valid, rsa.pem);
    // Only the public key: HS256 is not an algorithm of the configuration.
    const pemOnly = await TokenVerifier.create(loadConfig({ JWT_PUBLIC_KEY: rsa.pem }).jwt);
    expect(await reasonFrom(pemOnly, token)).toBe("algorithm not allowed");
    // Both sources, both algorithms allowed: HS256 is checked with the secret, never the PEM.
    const both = await TokenVerifier.create(
      loadConfig({ JWT_PUBLIC_KEY: rsa.pem, JWT_SECRET: SECRET, JWT_ALGORITHMS: "HS256,RS256" })
        .jwt,
    );
    expect(await reasonFrom(both, token)).toBe("bad signature");
  });

  it("refuses a token whose alg is outside JWT_ALGORITHMS, even when the key could verify it", async () => {
    const subject = await TokenVerifier.create(
      loadConfig({ JWT_PUBLIC_KEY: rsa.pem, JWT_ALGORITHMS: "PS256" }).jwt,
    );
    const rs = await new SignJWT({ ...valid })
      .setProtectedHeader({ alg: "RS256" })
      .sign(rsa.privateKey);
    const ps = await new SignJWT({ ...valid })
      .setProtectedHeader({ alg: "PS256" })
      .sign(rsa.privateKey);
    expect(await reasonFrom(subject, rs)).toBe("algorithm not allowed");
    expect((await subject.verify(ps)).userId).toBe("alice");
  });

  it("refuses an EC signature with a non-canonical last character", async () => {
    const subject = await TokenVerifier.create(loadConfig({ JWT_PUBLIC_KEY: ec.pem }).jwt);
    const token = await new SignJWT({ ...valid })
      .setProtectedHeader({ alg: "ES256" })
      .sign(ec.privateKey);
    // 64 bytes: 86 characters, the last with 4 unused bits.
    const value = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".indexOf(
      token.at(-1) as string,
    );
    const twin = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".charAt(
      value | 1,
    );
    expect(await reasonFrom(subject, lastCharacter(token, twin))).toBe("bad signature");
  });
});

describe("TokenVerifier (claims)", () => {
  it("checks aud when JWT_AUDIENCE is set: one of the token's audiences must be it", async () => {
    const subject = await TokenVerifier.create(
      loadConfig({ JWT_SECRET: SECRET, JWT_AUDIENCE: "mrezhen-chat" }).jwt,
    );
    expect((await subject.verify(await mint({ ...valid, aud: "mrezhen-chat" }))).userId).toBe(
      "alice",
    );
    expect(
      (await subject.verify(await mint({ ...valid, aud: ["account", "mrezhen-chat"] }))).userId,
    ).toBe("alice");
    expect(await reasonFrom(subject, await mint({ ...valid, aud: "account" }))).toBe(
      "invalid claim aud",
    );
    expect(await reasonFrom(subject, await mint(valid))).toBe("missing claim aud");
  });

  it("refuses a token older than JWT_MAX_AGE, and one without iat then", async () => {
    const subject = await TokenVerifier.create(
      loadConfig({ JWT_SECRET: SECRET, JWT_MAX_AGE: "10m" }).jwt,
    );
    expect((await subject.verify(await mint({ ...valid, iat: now() - 60 }))).userId).toBe("alice");
    expect(await reasonFrom(subject, await mint({ ...valid, iat: now() - 3600 }))).toBe(
      "token too old",
    );
    expect(await reasonFrom(subject, await mint(valid))).toBe("missing claim iat");
  });
});
