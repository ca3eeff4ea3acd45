import type { KeyObject } from "node:crypto";
import { Limits, userIdProblem } from "@mrezhen/protocol";
import {
  type CryptoKey,
  errors,
  type FlattenedJWSInput,
  importSPKI,
  type JWSHeaderParameters,
  type JWTVerifyOptions,
  jwtVerify,
} from "jose";
import type { Logger } from "../chat/ports.js";
import type { JwtConfig } from "../config.js";
import { AuthError } from "./errors.js";
import { Hs256FastPath } from "./hs256.js";
import { JwksKeys, type JwksStatus } from "./jwks.js";

export { AuthError } from "./errors.js";

/** Who a connection belongs to, from a verified token. */
export interface Principal {
  readonly userId: string;
  readonly name: string | undefined;
  /** When the token expires (`exp`), in milliseconds since the epoch. */
  readonly expiresAt: number;
  /** When the token was issued (`iat`), ms since the epoch, if it says (for revocations). */
  readonly issuedAt: number | undefined;
}

/** Tokens longer than this are refused unread: no legitimate token comes close. */
const MAX_TOKEN_LENGTH = Limits.MAX_TOKEN_LENGTH;

/**
 * How far ahead of ours an issuer's clock may be, in seconds: a token issued "now" by a provider
 * whose clock is a little ahead has an `iat` (and maybe an `nbf`) a little in the future. Not
 * applied to `exp`: a token is refused from its `exp` on, the moment an open connection with it
 * is closed.
 */
export const CLOCK_TOLERANCE_S = 5;

/** A compact JWS: three base64url parts, the signature possibly empty (`alg: none`). */
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;
const BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/**
 * Takes the token from where the protocol allows it, in its order: the `token` query parameter
 * (what a browser can set), then `Authorization: Bearer …`.
 */
export function extractToken(
  query: unknown,
  authorization: string | undefined,
): string | undefined {
  if (typeof query === "object" && query !== null) {
    const fromQuery = (query as Record<string, unknown>)["token"];
    if (typeof fromQuery === "string" && fromQuery !== "") return fromQuery;
  }
  if (authorization !== undefined) {
    const match = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(authorization);
    if (match?.[1] !== undefined) return match[1];
  }
  return undefined;
}

/**
 * Verifies tokens with jose. Keys: the HS256 secret (JWT_SECRET), a PEM public key
 * (JWT_PUBLIC_KEY) and an identity provider's JWKS (JWT_JWKS_URL). Checks: the signature, with
 * the algorithm pinned (JWT_ALGORITHMS: `none`, and any algorithm the configured keys were not
 * meant for, are refused before a key is chosen, and a key is only ever used for the algorithms
 * of its type, so an HS256 token "signed" with the public key's text finds no key); the
 * signature's base64url canonical; `iss` (required, exact); `aud` (when JWT_AUDIENCE is set);
 * `exp` (required); `nbf`; `iat` not in the future and, with JWT_MAX_AGE, not too old; `crit`
 * (no extension is implemented, so any is refused); and a `sub` that is a valid user id
 * (see userIdProblem). A token's `jwk`, `jku`, `x5u` and `x5c` headers are never used: keys come
 * from the configuration only.
 *
 * Which key: HS256 → the secret. Otherwise, a token with a `kid` → the JWKS; without one → the
 * PEM key when its type fits the algorithm, else the JWKS.
 *
 * jose verifies through WebCrypto, which costs an HS256 token about 100 µs of a node's CPU: a
 * plain HS256 token (what an HS256 issuer sends) is verified with node:crypto first, and only
 * what that cannot accept goes to jose (see Hs256FastPath). The HMAC key for jose is imported
 * once as a CryptoKey: jose turns a KeyObject or bytes into one on every call.
 */
export class TokenVerifier {
  private readonly options: JWTVerifyOptions;
  private readonly hs256: Hs256FastPath | undefined;

  private constructor(
    private readonly hmacKey: CryptoKey | undefined,
    /** The PEM key, imported once per algorithm it may verify. */
    private readonly pemKeys: ReadonlyMap<string, CryptoKey>,
    private readonly jwks: JwksKeys | undefined,
    private readonly config: JwtConfig,
    fastPath: boolean,
  ) {
    this.options = {
      algorithms: [...config.algorithms],
      issuer: config.issuer,
      ...(config.audience === undefined ? {} : { audience: config.audience }),
      ...(config.maxAgeSeconds === undefined ? {} : { maxTokenAge: config.maxAgeSeconds }),
      requiredClaims: ["exp", "sub", "iss"],
      clockTolerance: CLOCK_TOLERANCE_S,
    };
    this.hs256 =
      hmacKey === undefined || config.secret === undefined || !fastPath
        ? undefined
        : new Hs256FastPath(config.secret, {
            issuer: config.issuer,
            audience: config.audience,
            maxAgeSeconds: config.maxAgeSeconds,
            clockToleranceSeconds: CLOCK_TOLERANCE_S,
          });
  }

  /**
   * Imports the configured keys, and starts fetching the JWKS (without waiting for it).
   * `hs256FastPath: false` sends every token through jose (for the test that compares the two).
   */
  static async create(
    config: JwtConfig,
    log: Logger = silent,
    { hs256FastPath = true }: { hs256FastPath?: boolean } = {},
  ): Promise<TokenVerifier> {
    const hmacKey =
      config.secret === undefined || !config.algorithms.includes("HS256")
        ? undefined
        : await crypto.subtle.importKey(
            "raw",
            new TextEncoder().encode(config.secret),
            { name: "HMAC", hash: "SHA-256" },
            false,
            ["verify"],
          );
    const pemKeys = new Map<string, CryptoKey>();
    if (config.publicKey !== undefined) {
      const spki = config.publicKey.export({ type: "spki", format: "pem" }).toString();
      for (const alg of config.algorithms) {
        if (alg === "HS256" || !fits(config.publicKey, alg)) continue;
        pemKeys.set(alg, await importSPKI(spki, alg));
      }
    }
    const jwks =
      config.jwksUrl === undefined
        ? undefined
        : new JwksKeys({
            url: config.jwksUrl,
            cooldownMs: config.jwksCooldownMs,
            cacheMaxAgeMs: config.jwksCacheMaxAgeMs,
            log,
          });
    return new TokenVerifier(hmacKey, pemKeys, jwks, config, hs256FastPath);
  }

  /** The JWKS's state, when one is configured (for /ready). */
  get jwksStatus(): JwksStatus | undefined {
    return this.jwks?.status;
  }

  /** Whether the JWKS is the only source of keys (then no token can pass until it is fetched). */
  get jwksOnly(): boolean {
    return this.jwks !== undefined && this.hmacKey === undefined && this.pemKeys.size === 0;
  }

  close(): void {
    this.jwks?.close();
  }

  /** The token's principal, or an AuthError whose reason is safe to show. */
  async verify(token: string | undefined): Promise<Principal> {
    if (token === undefined) throw new AuthError("missing token");
    if (token.length > MAX_TOKEN_LENGTH) throw new AuthError("token too long");
    const firstDot = token.indexOf(".");
    const secondDot = token.indexOf(".", firstDot + 1);
    checkShape(token, firstDot, secondDot);
    let payload = this.hs256?.verify(token, firstDot, secondDot);
    if (payload === undefined) {
      try {
        ({ payload } = await jwtVerify(token, this.keyFor, this.options));
      } catch (error) {
        throw error instanceof AuthError ? error : new AuthError(describe(error));
      }
    }
    const { sub, exp, iat, name } = payload;
    // jose allows clockTolerance past `exp` too; the node does not (see CLOCK_TOLERANCE_S).
    const now = Date.now();
    if ((exp as number) * 1000 <= now) throw new AuthError("token expired");
    // jose checks `iat` only with maxTokenAge: a token from the future is refused in any case.
    if (iat !== undefined) {
      if (typeof iat !== "number" || !Number.isFinite(iat))
        throw new AuthError("invalid claim iat");
      if (iat * 1000 > now + CLOCK_TOLERANCE_S * 1000) {
        throw new AuthError("token issued in the future");
      }
    }
    if (typeof sub !== "string") throw new AuthError("invalid claim sub");
    // The same rule as every user id in a frame: a subject that is not well-formed Unicode
    // would share another user's Redis keys (a lone surrogate is stored as U+FFFD), and one
    // with bidi overrides or zero-width characters would look like another user.
    const problem = userIdProblem(sub);
    if (problem !== undefined) throw new AuthError(`subject ${problem}`);
    return {
      userId: sub,
      name: typeof name === "string" ? name : undefined,
      expiresAt: (exp as number) * 1000,
      issuedAt: typeof iat === "number" ? iat * 1000 : undefined,
    };
  }

  /** The key for a token whose `alg` jose has already checked against JWT_ALGORITHMS. */
  private readonly keyFor = async (
    header: JWSHeaderParameters,
    token: FlattenedJWSInput,
  ): Promise<CryptoKey> => {
    // jose understands `b64` (RFC 7797) in `crit`; nothing here does, so a token that requires
    // any extension to be understood is refused rather than half-understood.
    if (header.crit !== undefined) throw new AuthError("unsupported critical header");
    const alg = header.alg ?? "";
    if (alg === "HS256") {
      if (this.hmacKey !== undefined) return this.hmacKey;
      throw new AuthError("algorithm not allowed");
    }
    const pemKey = this.pemKeys.get(alg);
    if (this.jwks !== undefined && (header.kid !== undefined || pemKey === undefined)) {
      return this.jwks.key(header, token);
    }
    if (pemKey !== undefined) return pemKey;
    throw new AuthError("algorithm not allowed");
  };

  /** For logs: which key sources and algorithms are in use. */
  describeKeys(): Record<string, unknown> {
    return {
      algorithms: this.config.algorithms,
      secret: this.hmacKey !== undefined,
      publicKey: this.pemKeys.size > 0,
      jwksUrl: this.config.jwksUrl?.href,
    };
  }
}

const noop = () => undefined;
const silent: Logger = {
  debug: noop,
  info: noop,
  warn: noop,
  error: noop,
  child: () => silent,
  isLevelEnabled: () => false,
};

/** Whether a PEM key of this type may verify `alg` (RSA keys: RS* and PS*; EC: its curve's). */
function fits(key: KeyObject, alg: string): boolean {
  switch (key.asymmetricKeyType) {
    case "rsa":
      return /^(RS|PS)(256|384|512)$/.test(alg);
    case "rsa-pss":
      return /^PS(256|384|512)$/.test(alg);
    case "ec":
      return (
        { prime256v1: "ES256", secp384r1: "ES384", secp521r1: "ES512" }[
          key.asymmetricKeyDetails?.namedCurve ?? ""
        ] === alg
      );
    case "ed25519":
      return alg === "EdDSA" || alg === "Ed25519";
    default:
      return false;
  }
}

/**
 * Cheap checks before any cryptography. The three parts must be canonical base64url: a
 * signature of 32 bytes is 43 characters whose last one carries 2 unused bits, and a decoder
 * that ignores them (jose on Node 20 decodes with atob) accepts four spellings of one signature.
 * Accepting them lets anyone make "new" valid tokens out of a stolen one (which defeats a
 * blocklist or a replay cache keyed by the token's text).
 */
function checkShape(token: string, first: number, second: number): void {
  if (!COMPACT_JWS.test(token)) throw new AuthError("malformed token");
  // An empty signature (`alg: none`) was "bad signature" with fast-jwt; it stays so.
  if (second === token.length - 1) throw new AuthError("bad signature");
  if (!canonical(token, 0, first) || !canonical(token, first + 1, second)) {
    throw new AuthError("malformed token");
  }
  if (!canonical(token, second + 1, token.length)) throw new AuthError("bad signature");
}

/** Whether token[start, end) is base64url as an encoder writes it: unused bits zero, no padding. */
function canonical(token: string, start: number, end: number): boolean {
  const remainder = (end - start) % 4;
  if (remainder === 0) return true;
  if (remainder === 1) return false;
  const last = BASE64URL.indexOf(token.charAt(end - 1));
  // Two characters carry 12 bits for 8 (4 unused); three carry 18 for 16 (2 unused).
  return (last & (remainder === 2 ? 0x0f : 0x03)) === 0;
}

/** A reason safe to show: from jose's error class and claim, never its message's values. */
function describe(error: unknown): string {
  if (error instanceof errors.JWTExpired) {
    return error.claim === "iat" ? "token too old" : "token expired";
  }
  if (error instanceof errors.JWTClaimValidationFailed) {
    if (error.reason === "missing") return `missing claim ${error.claim}`;
    if (error.claim === "nbf" && error.reason === "check_failed") return "token not yet valid";
    if (error.claim === "iat" && error.reason === "check_failed") {
      return "token issued in the future";
    }
    return `invalid claim ${error.claim}`;
  }
  if (error instanceof errors.JOSEAlgNotAllowed) return "algorithm not allowed";
  if (error instanceof errors.JWSSignatureVerificationFailed) return "bad signature";
  // An unknown extension is JOSENotSupported, a malformed `crit` JWSInvalid: jose's messages
  // are the only way to tell these from other failures of the same classes.
  if (
    (error instanceof errors.JOSENotSupported || error instanceof errors.JWSInvalid) &&
    /"crit"|Extension Header Parameter/.test(error.message)
  ) {
    return "unsupported critical header";
  }
  return "malformed token";
}
