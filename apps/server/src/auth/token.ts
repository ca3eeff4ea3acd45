import { userIdProblem } from "@mrezhen/protocol";
import { createVerifier, TokenError } from "fast-jwt";

/** Who a connection belongs to, from a verified token. */
export interface Principal {
  readonly userId: string;
  readonly name: string | undefined;
  /** When the token expires (`exp`), in milliseconds since the epoch. */
  readonly expiresAt: number;
}

/** A refused token; `reason` is safe to show the client and to log (it never holds the token). */
export class AuthError extends Error {
  override readonly name = "AuthError";
  constructor(readonly reason: string) {
    super(reason);
  }
}

/** Tokens longer than this are refused unread: no legitimate token comes close. */
const MAX_TOKEN_LENGTH = 4096;

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
 * Verifies HS256 tokens: signature, `iss` (required, exact), `exp` (required), `nbf`, and a `sub`
 * that is a valid user id (1 to 128 code points, well-formed Unicode, no control character, not
 * only whitespace: see userIdProblem). The algorithm list is pinned, so `alg: none` and every other algorithm
 * are refused.
 *
 * fast-jwt (the verifier behind @fastify/jwt) rather than jose: jose 6 verifies through WebCrypto,
 * which on Node 20 cost about 58 µs per token against fast-jwt's 6 µs (node:crypto HMAC), a third
 * of a node's CPU per connect (see bench/RESULTS.md). Verification is synchronous.
 */
export class TokenVerifier {
  private readonly verifyToken: (token: string) => Claims;

  constructor(secret: string, issuer: string) {
    this.verifyToken = createVerifier({
      key: secret,
      algorithms: ["HS256"],
      allowedIss: issuer,
      // fast-jwt checks a claim's value only when it is present: iss must be, too.
      requiredClaims: ["exp", "sub", "iss"],
      cache: false,
    });
  }

  verify(token: string | undefined): Principal {
    if (token === undefined) throw new AuthError("missing token");
    if (token.length > MAX_TOKEN_LENGTH) throw new AuthError("token too long");
    let payload: Claims;
    try {
      payload = this.verifyToken(token);
    } catch (error) {
      throw new AuthError(describe(error));
    }
    const { sub, exp, name } = payload;
    if (typeof sub !== "string") throw new AuthError("invalid claim sub");
    // The same rule as every user id in a frame: a subject that is not well-formed Unicode
    // would share another user's Redis keys (a lone surrogate is stored as U+FFFD).
    const problem = userIdProblem(sub);
    if (problem !== undefined) throw new AuthError(`subject ${problem}`);
    return {
      userId: sub,
      name: typeof name === "string" ? name : undefined,
      expiresAt: (exp as number) * 1000,
    };
  }
}

/** A verified token's payload. */
type Claims = Record<string, unknown>;

/** A reason safe to show: fast-jwt's code, never its message (which may quote claim values). */
function describe(error: unknown): string {
  if (!(error instanceof TokenError)) return "malformed token";
  switch (error.code) {
    case TokenError.codes.expired:
      return "token expired";
    case TokenError.codes.inactive:
      return "token not yet valid";
    case TokenError.codes.invalidSignature:
    case TokenError.codes.missingSignature:
      return "bad signature";
    case TokenError.codes.invalidAlgorithm:
      return "algorithm not allowed";
    case TokenError.codes.invalidCritHeader:
      return "unsupported critical header";
    case TokenError.codes.missingRequiredClaim:
      return `missing claim ${claimIn(error.message)}`;
    case TokenError.codes.invalidClaimType:
    case TokenError.codes.invalidClaimValue:
      return `invalid claim ${claimIn(error.message)}`;
    default:
      return "malformed token";
  }
}

/** The claim a fast-jwt message names ("The iss claim value is not allowed."), if a known one. */
function claimIn(message: string): string {
  return /\b(iss|sub|exp|nbf|iat|aud|jti)\b/.exec(message)?.[1] ?? "";
}
