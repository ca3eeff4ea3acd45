#!/usr/bin/env node
/**
 * `pnpm run token <userId> [displayName] [--ttl <duration>]`: prints a token signed with the same
 * JWT_SECRET and JWT_ISSUER as the server, and nothing else on stdout.
 */
import { parseArgs } from "node:util";
import { createSigner } from "fast-jwt";
import { ConfigError, loadConfig } from "../config.js";

const USAGE = `usage: pnpm run token <userId> [displayName] [--ttl 1h]
  --ttl   lifetime: a number with s, m, h or d (default 24h)
  --help  this text
The token is signed with JWT_SECRET (or the file JWT_SECRET_FILE names) and JWT_ISSUER from the
environment, like the server.`;

function main(): void {
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
  if (userId.length < 1 || userId.length > 128)
    fail("mrezhen token: the user id must have 1 to 128 characters");
  const ttlSeconds = parseDuration(values.ttl);
  if (ttlSeconds === undefined)
    fail(`mrezhen token: --ttl "${values.ttl}" is not a duration like 30m, 24h or 7d`);

  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig();
  } catch (error) {
    fail(`mrezhen token: ${error instanceof ConfigError ? error.message : String(error)}`);
  }
  // fast-jwt, like the server's verifier: `iat` now, `exp` iat + ttl, header {alg, typ: "JWT"}.
  const sign = createSigner({
    key: config.jwt.secret,
    algorithm: "HS256",
    sub: userId,
    iss: config.jwt.issuer,
    expiresIn: ttlSeconds * 1000,
  });
  const token = sign(displayName === undefined ? {} : { name: displayName });
  process.stdout.write(`${token}\n`);
}

function parseArguments() {
  return parseArgs({
    allowPositionals: true,
    options: { ttl: { type: "string", default: "24h" }, help: { type: "boolean", short: "h" } },
  });
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

main();
