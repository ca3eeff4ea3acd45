import { createHmac, createSecretKey, type KeyObject, timingSafeEqual } from "node:crypto";
import { AuthError } from "./errors.js";

/** The claim checks jose is asked for, which the fast path must never be more lenient than. */
export interface ClaimRules {
  readonly issuer: string;
  readonly audience: string | undefined;
  readonly maxAgeSeconds: number | undefined;
  readonly clockToleranceSeconds: number;
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * HS256 verified with node:crypto, for the tokens an HS256 issuer actually sends: a header of
 * `alg: HS256` without `crit`, a payload that is a JSON object, and claims that pass. The same
 * token through jose's jwtVerify costs about 100 µs of a node's CPU (WebCrypto runs every HMAC as
 * a thread-pool job and resolves a promise); this costs about 10 µs, which is a fifth of a
 * connect (bench/RESULTS.md, "Tokens verified by jose").
 *
 * It only ever says yes to a token jose would accept with the same rules, or no to a token whose
 * signature is wrong (jose's answer too, once the header is plain). Anything else (an unusual
 * header, a payload that does not parse, a claim that fails) is left to jose, which then gives
 * the reason: so every refusal keeps its exact wording, and the rules live in one place. A test
 * compares the two on thousands of generated tokens.
 */
export class Hs256FastPath {
  private readonly key: KeyObject;

  constructor(
    secret: string,
    private readonly rules: ClaimRules,
  ) {
    this.key = createSecretKey(Buffer.from(secret, "utf8"));
  }

  /**
   * The claims of a token whose shape checkShape has already checked (three canonical base64url
   * parts, a signature that is not empty), or undefined when jose must decide. Throws "bad
   * signature" for a plain HS256 header whose signature does not match.
   */
  verify(token: string, firstDot: number, secondDot: number): Record<string, unknown> | undefined {
    const header = decodeObject(token, 0, firstDot);
    if (header === undefined || header["alg"] !== "HS256" || header["crit"] !== undefined) {
      return undefined;
    }
    const expected = createHmac("sha256", this.key).update(token.slice(0, secondDot)).digest();
    const signature = Buffer.from(token.slice(secondDot + 1), "base64url");
    if (signature.length !== expected.length || !timingSafeEqual(signature, expected)) {
      throw new AuthError("bad signature");
    }
    const claims = decodeObject(token, firstDot + 1, secondDot);
    return claims !== undefined && this.accepts(claims) ? claims : undefined;
  }

  /**
   * jose's claim validation, for the options TokenVerifier passes it, reduced to "would it pass":
   * required `exp`, `sub`, `iss` (and `iat` with a max age, `aud` with an audience), the exact
   * issuer, one matching audience, and the times with the clock tolerance, in whole seconds.
   */
  private accepts(claims: Record<string, unknown>): boolean {
    const { issuer, audience, maxAgeSeconds, clockToleranceSeconds: tolerance } = this.rules;
    const { exp, nbf, iat, iss, aud } = claims;
    if (iss !== issuer || !Object.hasOwn(claims, "sub")) return false;
    if (
      audience !== undefined &&
      !(aud === audience || (Array.isArray(aud) && aud.includes(audience)))
    ) {
      return false;
    }
    const now = Math.floor(Date.now() / 1000);
    if (typeof exp !== "number" || exp <= now - tolerance) return false;
    if (nbf !== undefined && (typeof nbf !== "number" || nbf > now + tolerance)) return false;
    if (iat !== undefined && typeof iat !== "number") return false;
    if (maxAgeSeconds !== undefined) {
      if (typeof iat !== "number") return false;
      const age = now - iat;
      if (age - tolerance > maxAgeSeconds || age < -tolerance) return false;
    }
    return true;
  }
}

/** token[start, end) as base64url → strict UTF-8 → JSON, if that is a plain object. */
function decodeObject(
  token: string,
  start: number,
  end: number,
): Record<string, unknown> | undefined {
  let value: unknown;
  try {
    value = JSON.parse(strictUtf8.decode(Buffer.from(token.slice(start, end), "base64url")));
  } catch {
    return undefined;
  }
  return typeof value === "object" && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : undefined;
}
