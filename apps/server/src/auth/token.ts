import { createSecretKey, type KeyObject } from "node:crypto";
import { Limits } from "@mrezhen/protocol";
import { errors, jwtVerify } from "jose";

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
 * Verifies HS256 tokens: signature, `iss`, `exp` (required), `nbf`, and a `sub` of 1 to 128
 * characters. The algorithm list is pinned, so `alg: none` and every other algorithm are refused.
 */
export class TokenVerifier {
  private readonly key: KeyObject;

  constructor(
    secret: string,
    private readonly issuer: string,
  ) {
    this.key = createSecretKey(Buffer.from(secret, "utf8"));
  }

  async verify(token: string | undefined): Promise<Principal> {
    if (token === undefined) throw new AuthError("missing token");
    if (token.length > MAX_TOKEN_LENGTH) throw new AuthError("token too long");
    let payload: Awaited<ReturnType<typeof jwtVerify>>["payload"];
    try {
      ({ payload } = await jwtVerify(token, this.key, {
        algorithms: ["HS256"],
        issuer: this.issuer,
        requiredClaims: ["exp", "sub"],
      }));
    } catch (error) {
      throw new AuthError(describe(error));
    }
    const { sub, exp, name } = payload;
    if (typeof sub !== "string" || sub.length < Limits.MIN_USER_ID_LENGTH) {
      throw new AuthError("empty subject");
    }
    if (sub.length > Limits.MAX_USER_ID_LENGTH) throw new AuthError("subject too long");
    return {
      userId: sub,
      name: typeof name === "string" ? name : undefined,
      expiresAt: (exp as number) * 1000,
    };
  }
}

function describe(error: unknown): string {
  if (error instanceof errors.JWTExpired) return "token expired";
  if (error instanceof errors.JWTClaimValidationFailed) return `invalid claim ${error.claim}`;
  if (error instanceof errors.JWSSignatureVerificationFailed) return "bad signature";
  if (error instanceof errors.JOSEAlgNotAllowed) return "algorithm not allowed";
  return "malformed token";
}
