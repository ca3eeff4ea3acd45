import { SignJWT } from "jose";

/** The development defaults of the server's config, so tests and tools mint matching tokens. */
export const DEV_JWT_SECRET = "mrezhen-dev-secret-change-in-production";
export const DEV_JWT_ISSUER = "mrezhen";

export interface TokenOptions {
  /** The user id (`sub`). */
  readonly sub: string;
  /** Display name (`name`). */
  readonly name?: string;
  readonly secret?: string;
  readonly issuer?: string;
  /** Lifetime in seconds from now (default one hour); negative makes an expired token. */
  readonly ttlSeconds?: number;
  /** `nbf` as seconds from now. */
  readonly notBeforeSeconds?: number;
  /** Leave out `exp` altogether. */
  readonly noExpiry?: boolean;
  readonly algorithm?: "HS256" | "HS384" | "HS512";
}

/** Mints an HMAC-signed JWT like the server expects (or, with options, like it must refuse). */
export async function mintToken(options: TokenOptions): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  const claims: Record<string, unknown> = {};
  if (options.name !== undefined) claims["name"] = options.name;
  let jwt = new SignJWT(claims)
    .setProtectedHeader({ alg: options.algorithm ?? "HS256", typ: "JWT" })
    .setSubject(options.sub)
    .setIssuer(options.issuer ?? DEV_JWT_ISSUER)
    .setIssuedAt(now);
  if (!options.noExpiry) jwt = jwt.setExpirationTime(now + (options.ttlSeconds ?? 3600));
  if (options.notBeforeSeconds !== undefined)
    jwt = jwt.setNotBefore(now + options.notBeforeSeconds);
  return jwt.sign(new TextEncoder().encode(options.secret ?? DEV_JWT_SECRET));
}
