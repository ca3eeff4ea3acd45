// JWT verification shared by the peers, with the checks Mrezhen makes of an HS256 token (HS256
// pinned, issuer checked, `exp` and `sub` required, a `sub` of 1 to 128 characters), with the same
// library the same way: jose's jwtVerify and a CryptoKey imported once, as in Mrezhen's
// TokenVerifier (apps/server/src/auth/token.ts). So a connect costs every system the same
// verification work.
import { jwtVerify } from "jose";

const key = await crypto.subtle.importKey(
  "raw",
  new TextEncoder().encode(required("JWT_SECRET")),
  { name: "HMAC", hash: "SHA-256" },
  false,
  ["verify"],
);
const options = {
  algorithms: ["HS256"],
  issuer: process.env.JWT_ISSUER ?? "mrezhen",
  requiredClaims: ["exp", "sub", "iss"],
};

/** The user id of a valid token, or undefined for anything part A refuses. */
export async function verifyToken(token) {
  if (typeof token !== "string" || token === "" || token.length > 4096) return undefined;
  try {
    const { payload } = await jwtVerify(token, key, options);
    const { sub } = payload;
    return typeof sub === "string" && sub.length >= 1 && sub.length <= 128 ? sub : undefined;
  } catch {
    return undefined;
  }
}

export function required(name) {
  const value = process.env[name];
  if (value === undefined || value === "") throw new Error(`${name} is required`);
  return value;
}
