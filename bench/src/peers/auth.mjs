// JWT verification shared by the peers, with the options part A requires of Mrezhen (HS256 pinned,
// issuer checked, `exp` required, non-empty `sub` of at most 128 characters), so a connect costs the
// peers the same verification work it costs Mrezhen.
import { createVerifier } from "fast-jwt";

// The same library and options as Mrezhen's TokenVerifier (apps/server/src/auth/token.ts).
const verify = createVerifier({
  key: required("JWT_SECRET"),
  algorithms: ["HS256"],
  allowedIss: process.env.JWT_ISSUER ?? "mrezhen",
  requiredClaims: ["exp", "sub", "iss"],
  cache: false,
});

/** The user id of a valid token, or undefined for anything part A refuses. */
export function verifyToken(token) {
  if (typeof token !== "string" || token === "" || token.length > 4096) return undefined;
  try {
    const { sub } = verify(token);
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
