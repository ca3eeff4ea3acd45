// JWT verification shared by the peers: Mrezhen's own verifier (apps/server, built by
// `pnpm build`), with the configuration the bench gives Mrezhen. So a connect costs every system
// the same verification work, and a change to that cost shows in every system's figures, not
// as a gain or loss of Mrezhen's against the others.
import { TokenVerifier } from "../../../apps/server/dist/auth/token.js";
import { loadConfig } from "../../../apps/server/dist/config.js";

const verifier = await TokenVerifier.create(
  loadConfig({
    JWT_SECRET: required("JWT_SECRET"),
    ...(process.env.JWT_ISSUER === undefined ? {} : { JWT_ISSUER: process.env.JWT_ISSUER }),
  }).jwt,
);

/** The user id of a valid token, or undefined for anything part A refuses. */
export async function verifyToken(token) {
  if (typeof token !== "string" || token === "") return undefined;
  try {
    return (await verifier.verify(token)).userId;
  } catch {
    return undefined;
  }
}

export function required(name) {
  const value = process.env[name];
  if (value === undefined || value === "") throw new Error(`${name} is required`);
  return value;
}
