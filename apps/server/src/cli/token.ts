#!/usr/bin/env node
/**
 * `pnpm run token <userId> [displayName] [--ttl <duration>] [--key private.pem [--kid id]]`:
 * prints a token the server accepts, and nothing else on stdout. Without --key it is signed with
 * JWT_SECRET (HS256); with --key, with that private key, the algorithm following its type, to
 * try the JWT_PUBLIC_KEY and JWT_JWKS_URL paths by hand. `iss` is JWT_ISSUER, and `aud` is
 * JWT_AUDIENCE when that is set.
 */
import { createPrivateKey, type KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { userIdProblem } from "@mrezhen/protocol";
import { SignJWT } from "jose";
import { algorithmsForKey, ConfigError, loadConfig } from "../config.js";

const USAGE = `usage: pnpm run token <userId> [displayName] [--ttl 1h] [--key private.pem [--kid id]]
  --ttl   lifetime: a number with s, m, h or d (default 24h)
  --key   sign with this PEM private key instead of JWT_SECRET: RSA gives RS256, EC P-256
          ES256 (P-384 ES384, P-521 ES512), Ed25519 EdDSA
  --kid   the key id to put in the header (the "kid" of the key in the JWKS)
  --help  this text
Without --key the token is signed with JWT_SECRET (or the file JWT_SECRET_FILE names). It
carries JWT_ISSUER as iss, and JWT_AUDIENCE as aud when that is set, from the environment, like
the server.`;

async function main(): Promise<void> {
  let parsed: ReturnType<typeof parseArguments>;
  try {
    parsed = parseArguments();
  } catch (error) {
    // An unknown option or a missing value: one line and the usage, not a stack trace.
    fail(`mrezhen token: ${error instanceof Error ? error.message : String(error)}\n${USAGE}`);
  }
  const { values, positionals } = parsed;
  const [userId, displayName] = positionals;
  // Asked for, the usage is the answer (stdout, exit 0); given instead of a bad call, an error.
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  if (userId === undefined || positionals.length > 2) fail(USAGE);
  const problem = userIdProblem(userId);
  if (problem !== undefined) fail(`mrezhen token: the user id ${problem}`);
  const ttlSeconds = parseDuration(values.ttl);
  if (ttlSeconds === undefined)
    fail(`mrezhen token: --ttl "${values.ttl}" is not a duration like 30m, 24h or 7d`);
  if (values.kid !== undefined && values.key === undefined)
    fail("mrezhen token: --kid needs --key (a token signed with JWT_SECRET has no key id)");

  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig();
  } catch (error) {
    fail(`mrezhen token: ${error instanceof ConfigError ? error.message : String(error)}`);
  }

  let key: KeyObject | Uint8Array;
  let alg: string;
  if (values.key === undefined) {
    if (config.jwt.secret === undefined) {
      fail(
        "mrezhen token: JWT_SECRET is not set (the node uses JWT_PUBLIC_KEY or JWT_JWKS_URL): sign with --key private.pem",
      );
    }
    key = new TextEncoder().encode(config.jwt.secret);
    alg = "HS256";
  } else {
    key = readPrivateKey(values.key);
    const [first] = algorithmsForKey(key);
    if (first === undefined)
      fail(
        `mrezhen token: ${values.key} is a ${key.asymmetricKeyType} key, which is not supported`,
      );
    alg = first;
  }

  const now = Math.floor(Date.now() / 1000);
  let jwt = new SignJWT(displayName === undefined ? {} : { name: displayName })
    .setProtectedHeader({
      alg,
      typ: "JWT",
      ...(values.kid === undefined ? {} : { kid: values.kid }),
    })
    .setSubject(userId)
    .setIssuer(config.jwt.issuer)
    .setIssuedAt(now)
    .setExpirationTime(now + ttlSeconds);
  if (config.jwt.audience !== undefined) jwt = jwt.setAudience(config.jwt.audience);
  process.stdout.write(`${await jwt.sign(key)}\n`);
}

function parseArguments() {
  return parseArgs({
    allowPositionals: true,
    options: {
      ttl: { type: "string", default: "24h" },
      key: { type: "string" },
      kid: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
}

function readPrivateKey(path: string): KeyObject {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (error) {
    fail(`mrezhen token: cannot read --key ${path}: ${(error as Error).message}`);
  }
  try {
    return createPrivateKey(text);
  } catch {
    fail(`mrezhen token: --key ${path} is not a PEM private key`);
  }
}

function parseDuration(text: string): number | undefined {
  const match = /^(\d+)([smhd])$/.exec(text);
  if (match === null) return undefined;
  const unit = { s: 1, m: 60, h: 3600, d: 86_400 }[match[2] as "s" | "m" | "h" | "d"];
  const seconds = Number(match[1]) * unit;
  return seconds > 0 ? seconds : undefined;
}

function fail(message: string): never {
  process.stderr.write(`${message}\n`);
  process.exit(2);
}

main().catch((error: unknown) => {
  fail(`mrezhen token: ${error instanceof Error ? error.message : String(error)}`);
});
