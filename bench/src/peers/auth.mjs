// JWT verification shared by the peers, with the options part A requires of Mrezhen (HS256 pinned,
// issuer checked, `exp` required, non-empty `sub` of at most 128 characters), so a connect costs the
// peers the same verification work it costs Mrezhen.
import { jwtVerify } from "jose";

const key = new TextEncoder().encode(required("JWT_SECRET"));
const options = {
  algorithms: ["HS256"],
  issuer: process.env.JWT_ISSUER ?? "mrezhen",
  requiredClaims: ["exp"],
};

/** The user id of a valid token, or undefined for anything part A refuses. */
export async function verifyToken(token) {
  if (typeof token !== "string" || token === "") return undefined;
  try {
    const { payload } = await jwtVerify(token, key, options);
    const sub = payload.sub;
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
