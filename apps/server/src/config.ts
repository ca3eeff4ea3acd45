import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";

/**
 * The node's configuration, read once from the environment at start-up. Every variable has its
 * default here, in one literal; a bad value stops start-up with one line that names the
 * variable and says how to fix it.
 */
export interface Config {
  readonly nodeEnv: string;
  readonly host: string;
  /** 0 picks a free port (tests). */
  readonly port: number;
  readonly jwt: { readonly secret: string; readonly issuer: string };
  readonly rateLimit: { readonly limit: number; readonly windowMs: number };
  readonly logLevel: string;
  /** Set → Redis engine; absent → the embedded memory engine (one node). */
  readonly redis: { readonly url: string; readonly keyPrefix: string } | undefined;
  readonly nodeId: string;
  readonly heartbeatIntervalMs: number;
  readonly shutdownTimeoutMs: number;
  /** A connection that has not sent a whole request (a WebSocket upgrade, a probe) by then is closed. */
  readonly upgradeTimeoutMs: number;
  /** How long messages are kept, and how many entries each inbox, queue and conversation index keeps. */
  readonly retention: { readonly messageTtlMs: number; readonly maxEntries: number };
  /** A user's presence is announced at most once per this many milliseconds (0: every change). */
  readonly presenceCoalesceMs: number;
  /** Per-sender quotas per UTC day, counted by the engine with each stored message. */
  readonly quotas: { readonly newConversationsPerDay: number; readonly bytesPerDay: number };
  /** get_history, get_conversations and get_online_users per second per user, on each node. */
  readonly readRateLimit: number;
  /** What one node lets clients hold: connections, and bytes written to them but not yet sent. */
  readonly limits: {
    /** Concurrent connections of one user on this node (not cluster-wide). */
    readonly connectionsPerUser: number;
    /** Concurrent connections on this node. */
    readonly connections: number;
    /** Unsent bytes summed over this node's connections; past it the slowest readers are closed. */
    readonly unsentBytes: number;
  };
}

export const DEV_JWT_SECRET = "mrezhen-dev-secret-change-in-production";

/**
 * Where a node listens while JWT_SECRET is the development default and HOST is unset: anyone who
 * can reach the port could mint tokens with the published secret, so only this machine may.
 */
export const DEV_HOST = "127.0.0.1";

/**
 * NODE_ID's alphabet. Connection ids are `<NODE_ID>.<n>` and travel inside `|`-separated Redis
 * payloads (engine-redis codec.ts), and NODE_ID names Redis keys and client names: a `|`, a
 * space or a control character there would corrupt events or keys.
 */
const NODE_ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;

export const defaults = {
  NODE_ENV: "development",
  HOST: "0.0.0.0",
  WS_PORT: 3001,
  JWT_SECRET: DEV_JWT_SECRET,
  JWT_ISSUER: "mrezhen",
  RATE_LIMIT_MESSAGES: 30,
  RATE_LIMIT_WINDOW_MS: 60_000,
  LOG_LEVEL: "info",
  REDIS_KEY_PREFIX: "mrezhen:",
  HEARTBEAT_INTERVAL_MS: 30_000,
  SHUTDOWN_TIMEOUT_MS: 10_000,
  UPGRADE_TIMEOUT_MS: 10_000,
  RETENTION_DAYS: 30,
  RETENTION_MAX_ENTRIES: 10_000,
  // Why one second: see DEFAULT_PRESENCE_COALESCE_MS in chat/service.ts.
  PRESENCE_COALESCE_MS: 1000,
  // A person starts a few, a busy one some tens of conversations a day: 1,000 is far above that,
  // and bounds what one sender adds to other users' lists and to the per-pair state a day.
  QUOTA_NEW_CONVERSATIONS_PER_DAY: 1_000,
  // At the default rate limit (30/min: 43,200 messages a day) typical messages (about 250 bytes
  // stored) come to about 11 MB a day, so 50 MiB never refuses ordinary use; it refuses a sender
  // of large messages after about 1,700 of the largest (30 KB stored), where the rate limit
  // alone let through 1.3 GB a day.
  QUOTA_BYTES_PER_DAY: 52_428_800,
  // A client opening a screen reads a few pages at once; 20 a second is a burst for any UI, and
  // bounds what one user's reads cost a node.
  READ_RATE_LIMIT: 20,
  MAX_CONNECTIONS_PER_USER: 16,
  // 100,000 idle connections at the measured 6.3 KiB each are about 615 MiB of RSS: with the
  // unsent-bytes budget below, a node's connection state stays near 1 GiB. Raise it on bigger
  // machines (and raise the open-files limit with it: one descriptor per connection).
  MAX_CONNECTIONS: 100_000,
  // 256 MiB: 32 clients at the 8 MiB per-connection slow-reader limit, or about 85 unread
  // answers of get_history's largest (100 messages of 5,000 escaped characters, ~3 MB).
  MAX_UNSENT_BYTES: 256 * 1024 * 1024,
} as const;

/** A configuration value that cannot be used; the message is the whole diagnosis. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];

type Env = Readonly<Record<string, string | undefined>>;

export function loadConfig(env: Env = process.env): Config {
  const read = (name: keyof typeof defaults | ExtraVariable): string | undefined => {
    const value = env[name]?.trim();
    return value === "" ? undefined : value;
  };
  const nodeEnv = read("NODE_ENV") ?? defaults.NODE_ENV;
  const secret =
    read("JWT_SECRET") ?? readSecretFile(read("JWT_SECRET_FILE")) ?? defaults.JWT_SECRET;
  if (nodeEnv === "production") {
    if (secret === DEV_JWT_SECRET) {
      throw new ConfigError(
        "JWT_SECRET is the development default, which is refused with NODE_ENV=production: set JWT_SECRET to a random secret of at least 32 characters (e.g. `openssl rand -base64 48`).",
      );
    }
    if (secret.length < 32) {
      throw new ConfigError(
        `JWT_SECRET has ${secret.length} characters; with NODE_ENV=production it needs at least 32 (e.g. \`openssl rand -base64 48\`).`,
      );
    }
  }
  const logLevel = read("LOG_LEVEL") ?? defaults.LOG_LEVEL;
  if (!LOG_LEVELS.includes(logLevel)) {
    throw new ConfigError(`LOG_LEVEL must be one of ${LOG_LEVELS.join(", ")}; got "${logLevel}".`);
  }
  const redisUrl = read("REDIS_URL");
  if (redisUrl !== undefined && !/^rediss?:\/\//.test(redisUrl)) {
    throw new ConfigError(`REDIS_URL must start with redis:// or rediss://; got "${redisUrl}".`);
  }
  const nodeId = read("NODE_ID") ?? `node-${randomBytes(4).toString("hex")}`;
  if (!NODE_ID_PATTERN.test(nodeId)) {
    throw new ConfigError(
      `NODE_ID must be 1 to 64 characters of A-Z, a-z, 0-9, ".", "_" and "-"; got ${JSON.stringify(nodeId)}.`,
    );
  }
  return Object.freeze({
    nodeEnv,
    host: read("HOST") ?? (secret === DEV_JWT_SECRET ? DEV_HOST : defaults.HOST),
    port: integer(read, "WS_PORT", 0, 65_535),
    jwt: Object.freeze({ secret, issuer: read("JWT_ISSUER") ?? defaults.JWT_ISSUER }),
    rateLimit: Object.freeze({
      limit: integer(read, "RATE_LIMIT_MESSAGES", 1, 1_000_000_000),
      windowMs: integer(read, "RATE_LIMIT_WINDOW_MS", 1, 86_400_000),
    }),
    logLevel,
    redis:
      redisUrl === undefined
        ? undefined
        : Object.freeze({
            url: redisUrl,
            keyPrefix: read("REDIS_KEY_PREFIX") ?? defaults.REDIS_KEY_PREFIX,
          }),
    nodeId,
    heartbeatIntervalMs: integer(read, "HEARTBEAT_INTERVAL_MS", 100, 3_600_000),
    shutdownTimeoutMs: integer(read, "SHUTDOWN_TIMEOUT_MS", 0, 600_000),
    upgradeTimeoutMs: integer(read, "UPGRADE_TIMEOUT_MS", 100, 600_000),
    retention: Object.freeze({
      messageTtlMs: integer(read, "RETENTION_DAYS", 1, 3650) * 86_400_000,
      maxEntries: integer(read, "RETENTION_MAX_ENTRIES", 10, 10_000_000),
    }),
    // Up to a minute: longer would make presence useless rather than cheap.
    presenceCoalesceMs: integer(read, "PRESENCE_COALESCE_MS", 0, 60_000),
    quotas: Object.freeze({
      newConversationsPerDay: integer(read, "QUOTA_NEW_CONVERSATIONS_PER_DAY", 1, 1_000_000_000),
      // At least 64 KiB, so that any message the protocol allows (a frame is at most 64 KiB) fits.
      bytesPerDay: integer(read, "QUOTA_BYTES_PER_DAY", 65_536, 1_000_000_000_000_000),
    }),
    readRateLimit: integer(read, "READ_RATE_LIMIT", 1, 1_000_000),
    limits: Object.freeze({
      connectionsPerUser: integer(read, "MAX_CONNECTIONS_PER_USER", 1, 1_000_000),
      connections: integer(read, "MAX_CONNECTIONS", 1, 10_000_000),
      // At least 1 MiB: under that, a single history answer would close its connection.
      unsentBytes: integer(read, "MAX_UNSENT_BYTES", 1024 * 1024, 2 ** 40),
    }),
  });
}

/**
 * Variables read besides those of `defaults`: they have no default value (REDIS_URL, NODE_ID,
 * JWT_SECRET_FILE), so the README's table gives theirs in words.
 */
export const otherVariables = ["REDIS_URL", "NODE_ID", "JWT_SECRET_FILE"] as const;
type ExtraVariable = (typeof otherVariables)[number];

/**
 * JWT_SECRET_FILE: the secret in a file (Docker's `*_FILE` convention; compose generates one on
 * first start), so it never has to sit in the environment or in a committed file. Surrounding
 * white space, a trailing newline above all, is not part of the secret.
 */
function readSecretFile(path: string | undefined): string | undefined {
  if (path === undefined) return undefined;
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (error) {
    const why = (error as NodeJS.ErrnoException).code ?? String(error);
    throw new ConfigError(`JWT_SECRET_FILE ${JSON.stringify(path)} cannot be read (${why}).`);
  }
  const secret = text.trim();
  if (secret === "") throw new ConfigError(`JWT_SECRET_FILE ${JSON.stringify(path)} is empty.`);
  return secret;
}

function integer(
  read: (name: keyof typeof defaults) => string | undefined,
  name: keyof typeof defaults,
  min: number,
  max: number,
): number {
  const raw = read(name);
  if (raw === undefined) return defaults[name] as number;
  const value = Number(raw);
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new ConfigError(`${name} must be a whole number from ${min} to ${max}; got "${raw}".`);
  }
  return value;
}
