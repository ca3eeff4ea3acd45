import { createHmac } from "node:crypto";
import { afterEach, describe, expect, it, vi } from "vitest";
import { AuthError, type Principal, TokenVerifier } from "../../src/auth/token.js";
import { loadConfig } from "../../src/config.js";

// The HS256 fast path (node:crypto) must answer every token exactly as jose alone does: the same
// principal or the same reason. Tokens are built by hand from a grid of headers, claims and
// signatures, sampled with a fixed seed so a failure can be replayed.

const SECRET = "unit-test-secret-of-at-least-32-chars";
const now = () => Math.floor(Date.now() / 1000);
const part = (value: unknown) =>
  Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");

/** A raw part: bytes that are not JSON, or not UTF-8. */
class Raw {
  constructor(readonly bytes: Buffer) {}
}
const encode = (value: unknown) =>
  value instanceof Raw ? value.bytes.toString("base64url") : part(value);

function token(header: unknown, claims: unknown, signature: "right" | "wrong" | "short"): string {
  const input = `${encode(header)}.${encode(claims)}`;
  const key = signature === "wrong" ? `${SECRET}!` : SECRET;
  const mac = createHmac("sha256", key).update(input).digest();
  return `${input}.${(signature === "short" ? mac.subarray(0, 16) : mac).toString("base64url")}`;
}

const headers: unknown[] = [
  { alg: "HS256" },
  { alg: "HS256", typ: "JWT" },
  { typ: "JWT", alg: "HS256", kid: "any" },
  { alg: "HS256", jku: "http://127.0.0.1:1/keys", jwk: { kty: "oct", k: "AAAA" } },
  { alg: "HS256", crit: ["b64"], b64: true },
  { alg: "HS256", crit: ["b64"], b64: "yes" },
  { alg: "HS256", crit: ["exp"] },
  { alg: "HS256", crit: [] },
  { alg: "HS256", b64: false },
  { alg: "HS384" },
  { alg: "hs256" },
  { alg: "none" },
  { alg: ["HS256"] },
  {},
  [],
  "HS256",
  null,
  new Raw(Buffer.from("{not json")),
  new Raw(Buffer.from([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d])), // {"\xff":1}
];

function claimChoices(t: number): Record<string, unknown[]> {
  const absent = undefined;
  return {
    sub: ["alice", "", 42, null, absent, "x".repeat(129), "a\u202eb", "😀".repeat(128)],
    iss: ["mrezhen", "other", absent, 7, ["mrezhen"], null],
    aud: [absent, "chat", ["account", "chat"], ["account"], "account", 5, [5], null],
    exp: [t + 3600, t - 1, t + 2, t - 3, t - 10, absent, "9999999999", null, 1e20, t + 0.5],
    nbf: [absent, absent, t + 3, t + 30, t - 30, "soon", null],
    iat: [absent, absent, t, t + 3, t + 30, t - 30, t - 100_000, "then", null],
    name: [absent, "Alice", 3],
    __proto__: [absent, absent, { sub: "mallory" }],
  };
}

/** A small deterministic generator (mulberry32), so a failing sample can be replayed. */
function random(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

/** `base`: the claims a valid token has under the configuration, before changes. */
function sampleTokens(count: number, seed: number, base: Record<string, unknown>): string[] {
  const next = random(seed);
  const pick = <T>(list: readonly T[]): T => list[Math.floor(next() * list.length)] as T;
  const t = now();
  const choices = claimChoices(t);
  const tokens: string[] = [];
  for (let i = 0; i < count; i++) {
    // Most samples are a plain header with a valid payload but one or two claims changed, where
    // the two paths could most plausibly differ; the rest roam the whole grid.
    const header = next() < 0.6 ? { alg: "HS256" } : pick(headers);
    let claims: unknown;
    const shape = next();
    if (shape < 0.04) claims = pick([[], "text", 1, null, new Raw(Buffer.from("{]"))]);
    else if (shape < 0.06)
      claims = new Raw(Buffer.from([0x7b, 0x22, 0xc3, 0x22, 0x3a, 0x31, 0x7d]));
    else {
      const object: Record<string, unknown> = { ...base, exp: t + 3600 };
      const changes = next() < 0.5 ? 1 : 1 + Math.floor(next() * 4);
      for (let c = 0; c < changes; c++) {
        const [claim, values] = pick(Object.entries(choices));
        const value = pick(values);
        if (value === undefined) delete object[claim];
        else if (claim === "__proto__")
          Object.defineProperty(object, claim, { value, enumerable: true });
        else object[claim] = value;
      }
      claims = object;
    }
    const signature = next() < 0.85 ? "right" : pick(["wrong", "short"] as const);
    tokens.push(token(header, claims, signature));
  }
  return tokens;
}

async function answer(verifier: TokenVerifier, token: string): Promise<Principal | string> {
  try {
    return await verifier.verify(token);
  } catch (error) {
    if (error instanceof AuthError) return error.reason;
    throw error;
  }
}

const valid = { sub: "alice", iss: "mrezhen" };
const configurations: [string, Record<string, string>, Record<string, unknown>][] = [
  ["the defaults", {}, valid],
  ["JWT_AUDIENCE", { JWT_AUDIENCE: "chat" }, { ...valid, aud: "chat" }],
  ["JWT_MAX_AGE", { JWT_MAX_AGE: "60s" }, { ...valid, iat: now() - 10 }],
  ["both", { JWT_AUDIENCE: "chat", JWT_MAX_AGE: "60s" }, { ...valid, aud: "chat", iat: now() }],
];

describe("the HS256 fast path", () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it.each(configurations)(
    "answers 2,000 generated tokens exactly as jose does (%s)",
    async (_name, env, base) => {
      const config = loadConfig({ JWT_SECRET: SECRET, ...env }).jwt;
      const fast = await TokenVerifier.create(config);
      const jose = await TokenVerifier.create(config, undefined, { hs256FastPath: false });
      const answers = new Map<string, number>();
      for (const sample of sampleTokens(2_000, 0x5eed + Object.keys(env).length, base)) {
        const expected = await answer(jose, sample);
        expect({ sample, answer: await answer(fast, sample) }).toEqual({
          sample,
          answer: expected,
        });
        const key = typeof expected === "string" ? expected : "accepted";
        answers.set(key, (answers.get(key) ?? 0) + 1);
      }
      // The grid must reach both sides of every check, or the comparison proves little.
      expect(answers.get("accepted")).toBeGreaterThan(100);
      for (const reason of [
        "bad signature",
        "malformed token",
        "token expired",
        "invalid claim sub",
        "invalid claim iss",
        "algorithm not allowed",
        "unsupported critical header",
        "token issued in the future",
      ]) {
        expect({ reason, seen: answers.has(reason) }).toEqual({ reason, seen: true });
      }
    },
  );

  it("accepts a plain HS256 token without WebCrypto, and leaves an unusual one to jose", async () => {
    const verifier = await TokenVerifier.create(loadConfig({ JWT_SECRET: SECRET }).jwt);
    const subtleVerify = vi.spyOn(crypto.subtle, "verify");
    const claims = { sub: "alice", iss: "mrezhen", exp: now() + 60 };

    expect(
      (await verifier.verify(token({ alg: "HS256", typ: "JWT" }, claims, "right"))).userId,
    ).toBe("alice");
    expect(await answer(verifier, token({ alg: "HS256" }, claims, "wrong"))).toBe("bad signature");
    expect(subtleVerify).not.toHaveBeenCalled();

    // A header with crit, and a claim that fails: jose decides, and gives the reason.
    expect(
      await answer(verifier, token({ alg: "HS256", crit: ["b64"], b64: true }, claims, "right")),
    ).toBe("unsupported critical header");
    expect(await answer(verifier, token({ alg: "HS256" }, { ...claims, iss: "x" }, "right"))).toBe(
      "invalid claim iss",
    );
    expect(subtleVerify).toHaveBeenCalledTimes(1);
  });
});
