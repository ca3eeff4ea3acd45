import { createPublicKey, type KeyObject, randomBytes } from "node:crypto";
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
  readonly jwt: JwtConfig;
  /** A connection is sent `token_expiring` this long before its token's `exp` (see ChatService). */
  readonly tokenExpiringNoticeMs: number;
  /** How often open connections are checked for a token about to expire, or expired. */
  readonly tokenSweepIntervalMs: number;
  /**
   * ALLOWED_ORIGINS: the browser origins that may open a WebSocket (besides the node's own);
   * undefined allows every origin.
   */
  readonly allowedOrigins: readonly string[] | undefined;
  readonly rateLimit: { readonly limit: number; readonly windowMs: number };
  readonly logLevel: string;
  /**
   * Set → Redis engine: one standalone Redis (`url`, REDIS_URL) or a Redis Cluster
   * (`clusterNodes`, REDIS_CLUSTER_NODES); absent → the embedded memory engine (one node).
   */
  readonly redis:
    | {
        readonly url: string;
        /** Seed nodes (`host:port`) of a Redis Cluster; when set, `url` is not used. */
        readonly clusterNodes: readonly string[] | undefined;
        readonly keyPrefix: string;
        /** Replicas that must have each step of a direct message before it is acked (WAIT). */
        readonly waitReplicas: number;
      }
    | undefined;
  readonly nodeId: string;
  readonly heartbeatIntervalMs: number;
  readonly shutdownTimeoutMs: number;
  /** A connection that has not sent a whole request (a WebSocket upgrade, a probe) by then is closed. */
  readonly upgradeTimeoutMs: number;
  /** Refuse upgrades (503) while the event loop runs this many ms late; 0: never. */
  readonly upgradeShedLagMs: number;
  /** Upgrade work per turn of the event loop before the rest waits for the next (ms); 0: unpaced. */
  readonly upgradeTurnBudgetMs: number;
  /** Connections the kernel may hold completed for this node before it accepts them (listen(2)). */
  readonly listenBacklog: number;
  /** How long messages are kept, and how many entries each inbox, queue and conversation index keeps. */
  readonly retention: { readonly messageTtlMs: number; readonly maxEntries: number };
  /** A user's presence is announced at most once per this many milliseconds (0: every change). */
  readonly presenceCoalesceMs: number;
  /** Per-sender quotas per UTC day, counted by the engine with each stored message. */
  readonly quotas: { readonly newConversationsPerDay: number; readonly bytesPerDay: number };
  /** get_history, get_conversations and get_online_users per second per user, on each node. */
  readonly readRateLimit: number;
  /** GROUP_MAX_MEMBERS, GROUP_MAX_PER_USER, GROUP_RECEIPTS_MAX_MEMBERS. */
  readonly groups: {
    readonly maxMembers: number;
    readonly maxGroupsPerUser: number;
    readonly receiptsMaxMembers: number;
  };
  /**
   * GROUP_CHUNK_ABOVE, GROUP_CHUNK_MEMBERS: on a standalone Redis, a group's entries to more
   * members than chunkAbove are written into the inboxes by scripts of chunkMembers members.
   */
  readonly groupFanOut: { readonly chunkAbove: number; readonly chunkMembers: number };
  /** What one node lets clients hold: connections, and bytes written to them but not yet sent. */
  readonly limits: {
    /** Concurrent connections of one user on this node (not cluster-wide). */
    readonly connectionsPerUser: number;
    /** Concurrent connections on this node. */
    readonly connections: number;
    /** Unsent bytes summed over this node's connections; past it the slowest readers are closed. */
    readonly unsentBytes: number;
  };
  /** API_KEY: the server API's keys (any of them is accepted); undefined: no API (404). */
  readonly api: { readonly keys: readonly string[] } | undefined;
  /** WEBHOOK_URL and its settings; undefined: no events are queued or sent. */
  readonly webhooks:
    | {
        readonly url: string;
        readonly secret: string;
        readonly maxAgeMs: number;
        readonly retryBaseMs: number;
        readonly retryMaxMs: number;
        readonly timeoutMs: number;
        readonly claimIdleMs: number;
      }
    | undefined;
}

/** Where tokens' keys come from, and what a token must claim. See auth/token.ts. */
export interface JwtConfig {
  /**
   * The HS256 key: JWT_SECRET, or the development default when no key source is set at all.
   * Undefined when only JWT_PUBLIC_KEY or JWT_JWKS_URL is set: HS256 is then refused.
   */
  readonly secret: string | undefined;
  /** JWT_PUBLIC_KEY, parsed. */
  readonly publicKey: KeyObject | undefined;
  /** JWT_JWKS_URL. */
  readonly jwksUrl: URL | undefined;
  readonly issuer: string;
  /** JWT_AUDIENCE: checked (one of `aud`) when set. */
  readonly audience: string | undefined;
  /** JWT_ALGORITHMS, or derived from the key sources; never empty, never `none`. */
  readonly algorithms: readonly string[];
  /** JWT_MAX_AGE in seconds: a token older than this (by `iat`) is refused. */
  readonly maxAgeSeconds: number | undefined;
  /** At most one request to the JWKS URL per this many milliseconds. */
  readonly jwksCooldownMs: number;
  /** The key set is fetched again in the background once it is this old. */
  readonly jwksCacheMaxAgeMs: number;
}

/** An API key shorter than this is refused: a key is a bearer secret, not a password. */
const MIN_API_KEY_LENGTH = 16;

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

/** The algorithms a public key can verify, by key type; the first is the default. */
const ALGORITHMS_BY_KEY: Readonly<Record<string, readonly string[]>> = {
  rsa: ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"],
  "rsa-pss": ["PS256", "PS384", "PS512"],
  "ec:prime256v1": ["ES256"],
  "ec:secp384r1": ["ES384"],
  "ec:secp521r1": ["ES512"],
  ed25519: ["EdDSA", "Ed25519"],
};

/**
 * Every algorithm a token may be signed with: HS256 (JWT_SECRET) and the asymmetric ones. `none`
 * never; HS384/HS512 are not offered, since JWT_SECRET is an HS256 key.
 */
export const SUPPORTED_ALGORITHMS: readonly string[] = [
  "HS256",
  ...new Set(Object.values(ALGORITHMS_BY_KEY).flat()),
];

/** The algorithms a public key of this type can verify (empty: a type we do not support). */
export function algorithmsForKey(key: KeyObject): readonly string[] {
  const type = key.asymmetricKeyType ?? "";
  const curve = key.asymmetricKeyDetails?.namedCurve;
  return ALGORITHMS_BY_KEY[type === "ec" ? `ec:${curve}` : type] ?? [];
}

export const defaults = {
  NODE_ENV: "development",
  HOST: "0.0.0.0",
  WS_PORT: 3001,
  JWT_SECRET: DEV_JWT_SECRET,
  JWT_ISSUER: "mrezhen",
  // jose's defaults for createRemoteJWKSet: a provider that rotates keys publishes the new one
  // well before signing with it, so a 30 s wait for an unknown kid is rare and short, and at most
  // one request per 30 s is nothing to the provider however many bad tokens arrive.
  JWT_JWKS_COOLDOWN_MS: 30_000,
  JWT_JWKS_CACHE_MAX_AGE_MS: 600_000,
  // A client needs one round trip to its identity provider and one to the node: 30 s is ample,
  // and short next to the usual token lifetimes (5 min to 1 h).
  TOKEN_EXPIRING_NOTICE_MS: 30_000,
  TOKEN_SWEEP_INTERVAL_MS: 1000,
  RATE_LIMIT_MESSAGES: 30,
  RATE_LIMIT_WINDOW_MS: 60_000,
  LOG_LEVEL: "info",
  REDIS_KEY_PREFIX: "mrezhen:",
  // 0: a message is acked once its master has it (replication is asynchronous; see the README
  // for what a master's crash can lose then). N: once N replicas have it too, at a round trip's
  // worth of latency per step.
  REDIS_WAIT_REPLICAS: 0,
  HEARTBEAT_INTERVAL_MS: 30_000,
  SHUTDOWN_TIMEOUT_MS: 10_000,
  UPGRADE_TIMEOUT_MS: 10_000,
  // Node's default is 511. In a connect storm a node busy with upgrades accepts in bursts; past
  // a full queue the kernel drops the handshake's last packet and the client waits a second or
  // more to retransmit (tens of thousands of such drops in the 20,000-connection storm). Linux
  // caps it at net.core.somaxconn (4096 on current kernels).
  LISTEN_BACKLOG: 4096,
  // Off by default: a refused upgrade is a client's retry, which a client that does not retry
  // (or a test) takes for a failure. See http/upgrade-shedding.ts and the README.
  UPGRADE_SHED_LAG_MS: 0,
  // A few upgrades' worth (each about a millisecond): a reconnect storm then delays the connected
  // users' messages by about this much per turn instead of by the whole storm's backlog. See
  // http/upgrade-pacing.ts.
  UPGRADE_TURN_BUDGET_MS: 5,
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
  // A group's entry is written to every member's inbox (docs/groups.md): 1,000 members keep a
  // message's fan-out to about a millisecond of Redis time.
  GROUP_MAX_MEMBERS: 1000,
  // Bounds a user's group list (get_groups, conversations) and what a connect reads.
  GROUP_MAX_PER_USER: 500,
  // Per-member read receipts up to this size (n² frames when everyone reads); larger groups
  // answer get_read_by with a count instead.
  GROUP_RECEIPTS_MAX_MEMBERS: 20,
  // A larger group's entry is written into its members' inboxes in chunks (docs/groups.md,
  // "Large groups"): a script writing 1,000 inboxes took about 6 ms, and Redis serves nobody
  // meanwhile; a chunk of 125 about 0.7 ms (of 250, 1.2 to 1.9 ms: the longest scripts in the
  // benchmark's 1,000-member group went from 11-14 ms to 6-10 ms with 125).
  GROUP_CHUNK_ABOVE: 256,
  GROUP_CHUNK_MEMBERS: 125,
  MAX_CONNECTIONS_PER_USER: 16,
  // 100,000 idle connections at the measured 6.3 KiB each are about 615 MiB of RSS: with the
  // unsent-bytes budget below, a node's connection state stays near 1 GiB. Raise it on bigger
  // machines (and raise the open-files limit with it: one descriptor per connection).
  MAX_CONNECTIONS: 100_000,
  // 256 MiB: 32 clients at the 8 MiB per-connection slow-reader limit, or about 85 unread
  // answers of get_history's largest (100 messages of 5,000 escaped characters, ~3 MB).
  MAX_UNSENT_BYTES: 256 * 1024 * 1024,
  // A day: a receiver down for a night still gets everything; older events are rarely useful.
  WEBHOOK_MAX_AGE: 86_400,
  WEBHOOK_RETRY_BASE_MS: 1000,
  // Five minutes between attempts at most: a receiver back from an outage hears again soon.
  WEBHOOK_RETRY_MAX_MS: 300_000,
  WEBHOOK_TIMEOUT_MS: 10_000,
  // How long events a node holds may stay unacknowledged before another node takes them over
  // (a live node renews its hold every third of it): the delay after a node dies.
  WEBHOOK_CLAIM_IDLE_MS: 30_000,
} as const;

/** A configuration value that cannot be used; the message is the whole diagnosis. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];

type Env = Readonly<Record<string, string | undefined>>;

export function loadConfig(env: Env = process.env): Config {
  const read: Read = (name) => {
    const value = env[name]?.trim();
    return value === "" ? undefined : value;
  };
  const nodeEnv = read("NODE_ENV") ?? defaults.NODE_ENV;
  const jwt = readJwt(read, nodeEnv);
  const logLevel = read("LOG_LEVEL") ?? defaults.LOG_LEVEL;
  if (!LOG_LEVELS.includes(logLevel)) {
    throw new ConfigError(`LOG_LEVEL must be one of ${LOG_LEVELS.join(", ")}; got "${logLevel}".`);
  }
  const redisUrl = read("REDIS_URL");
  if (redisUrl !== undefined && !/^rediss?:\/\//.test(redisUrl)) {
    throw new ConfigError(`REDIS_URL must start with redis:// or rediss://; got "${redisUrl}".`);
  }
  const nodeId = read("NODE_ID") ?? `node-${randomBytes(4).toString("hex")}`;
  const apiKeys = read("API_KEY")
    ?.split(",")
    .map((key) => key.trim())
    .filter((key) => key !== "");
  if (apiKeys?.some((key) => key.length < MIN_API_KEY_LENGTH)) {
    throw new ConfigError(
      `API_KEY: every key (comma-separated) needs at least ${MIN_API_KEY_LENGTH} characters (e.g. \`openssl rand -hex 32\`).`,
    );
  }
  const webhookUrl = read("WEBHOOK_URL");
  const webhookSecret = read("WEBHOOK_SECRET");
  if (webhookUrl !== undefined) {
    let protocol = "";
    try {
      protocol = new URL(webhookUrl).protocol;
    } catch {}
    if (protocol !== "http:" && protocol !== "https:") {
      throw new ConfigError(`WEBHOOK_URL must be an http:// or https:// URL; got "${webhookUrl}".`);
    }
    if (webhookSecret === undefined || webhookSecret.length < MIN_API_KEY_LENGTH) {
      throw new ConfigError(
        `WEBHOOK_SECRET must be set, with at least ${MIN_API_KEY_LENGTH} characters, when WEBHOOK_URL is (e.g. whsec_ and \`openssl rand -base64 32\`).`,
      );
    }
  }
  if (!NODE_ID_PATTERN.test(nodeId)) {
    throw new ConfigError(
      `NODE_ID must be 1 to 64 characters of A-Z, a-z, 0-9, ".", "_" and "-"; got ${JSON.stringify(nodeId)}.`,
    );
  }
  const clusterNodes = read("REDIS_CLUSTER_NODES")
    ?.split(",")
    .map((node) => node.trim())
    .filter((node) => node !== "");
  if (clusterNodes !== undefined) {
    for (const node of clusterNodes) {
      const port = Number(node.slice(node.lastIndexOf(":") + 1));
      if (!/^[^\s,]+:\d+$/.test(node) || !Number.isInteger(port) || port < 1 || port > 65_535) {
        throw new ConfigError(
          `REDIS_CLUSTER_NODES must be a comma-separated list of host:port seed nodes; got "${node}".`,
        );
      }
    }
    if (redisUrl !== undefined) {
      throw new ConfigError(
        "REDIS_URL and REDIS_CLUSTER_NODES are both set: set REDIS_URL for one standalone Redis, or REDIS_CLUSTER_NODES for a Redis Cluster, not both.",
      );
    }
  }
  const keyPrefix = read("REDIS_KEY_PREFIX") ?? defaults.REDIS_KEY_PREFIX;
  if (clusterNodes !== undefined && /[{}]/.test(keyPrefix)) {
    throw new ConfigError(
      `REDIS_KEY_PREFIX must not contain { or } with REDIS_CLUSTER_NODES (they would become part of every key's hash tag); got "${keyPrefix}".`,
    );
  }
  return Object.freeze({
    nodeEnv,
    host: read("HOST") ?? (jwt.secret === DEV_JWT_SECRET ? DEV_HOST : defaults.HOST),
    port: integer(read, "WS_PORT", 0, 65_535),
    jwt,
    tokenExpiringNoticeMs: integer(read, "TOKEN_EXPIRING_NOTICE_MS", 0, 86_400_000),
    tokenSweepIntervalMs: integer(read, "TOKEN_SWEEP_INTERVAL_MS", 10, 60_000),
    allowedOrigins: readOrigins(read("ALLOWED_ORIGINS")),
    rateLimit: Object.freeze({
      limit: integer(read, "RATE_LIMIT_MESSAGES", 1, 1_000_000_000),
      windowMs: integer(read, "RATE_LIMIT_WINDOW_MS", 1, 86_400_000),
    }),
    logLevel,
    redis:
      redisUrl === undefined && clusterNodes === undefined
        ? undefined
        : Object.freeze({
            url: redisUrl ?? "",
            clusterNodes: clusterNodes === undefined ? undefined : Object.freeze(clusterNodes),
            keyPrefix,
            // Up to 16: more replicas per master than that is not a deployment this serves.
            waitReplicas: integer(read, "REDIS_WAIT_REPLICAS", 0, 16),
          }),
    nodeId,
    heartbeatIntervalMs: integer(read, "HEARTBEAT_INTERVAL_MS", 100, 3_600_000),
    shutdownTimeoutMs: integer(read, "SHUTDOWN_TIMEOUT_MS", 0, 600_000),
    upgradeTimeoutMs: integer(read, "UPGRADE_TIMEOUT_MS", 100, 600_000),
    listenBacklog: integer(read, "LISTEN_BACKLOG", 1, 65_535),
    upgradeShedLagMs: integer(read, "UPGRADE_SHED_LAG_MS", 0, 60_000),
    upgradeTurnBudgetMs: integer(read, "UPGRADE_TURN_BUDGET_MS", 0, 60_000),
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
    groups: Object.freeze({
      maxMembers: integer(read, "GROUP_MAX_MEMBERS", 2, 100_000),
      maxGroupsPerUser: integer(read, "GROUP_MAX_PER_USER", 1, 100_000),
      receiptsMaxMembers: integer(read, "GROUP_RECEIPTS_MAX_MEMBERS", 0, 100_000),
    }),
    groupFanOut: Object.freeze({
      chunkAbove: integer(read, "GROUP_CHUNK_ABOVE", 1, 100_000),
      chunkMembers: integer(read, "GROUP_CHUNK_MEMBERS", 1, 100_000),
    }),
    limits: Object.freeze({
      connectionsPerUser: integer(read, "MAX_CONNECTIONS_PER_USER", 1, 1_000_000),
      connections: integer(read, "MAX_CONNECTIONS", 1, 10_000_000),
      // At least 1 MiB: under that, a single history answer would close its connection.
      unsentBytes: integer(read, "MAX_UNSENT_BYTES", 1024 * 1024, 2 ** 40),
    }),
    api:
      apiKeys === undefined || apiKeys.length === 0
        ? undefined
        : Object.freeze({ keys: Object.freeze(apiKeys) }),
    webhooks:
      webhookUrl === undefined || webhookSecret === undefined
        ? undefined
        : Object.freeze({
            url: webhookUrl,
            secret: webhookSecret,
            maxAgeMs: integer(read, "WEBHOOK_MAX_AGE", 1, 30 * 86_400) * 1000,
            retryBaseMs: integer(read, "WEBHOOK_RETRY_BASE_MS", 1, 3_600_000),
            retryMaxMs: integer(read, "WEBHOOK_RETRY_MAX_MS", 1, 86_400_000),
            timeoutMs: integer(read, "WEBHOOK_TIMEOUT_MS", 100, 600_000),
            claimIdleMs: integer(read, "WEBHOOK_CLAIM_IDLE_MS", 150, 3_600_000),
          }),
  });
}

/**
 * Variables read besides those of `defaults`: they have no default value (unset means off, or a
 * value derived from others), so the README's table gives theirs in words.
 */
export const otherVariables = [
  "REDIS_URL",
  "REDIS_CLUSTER_NODES",
  "NODE_ID",
  "JWT_SECRET_FILE",
  "JWT_PUBLIC_KEY",
  "JWT_JWKS_URL",
  "JWT_AUDIENCE",
  "JWT_ALGORITHMS",
  "JWT_MAX_AGE",
  "ALLOWED_ORIGINS",
  "API_KEY",
  "WEBHOOK_URL",
  "WEBHOOK_SECRET",
] as const;
type ExtraVariable = (typeof otherVariables)[number];
type Read = (name: keyof typeof defaults | ExtraVariable) => string | undefined;

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

/**
 * The token settings. Three key sources, any combination: JWT_SECRET (HS256), JWT_PUBLIC_KEY (a
 * PEM public key) and JWT_JWKS_URL (an identity provider's key set). The development secret is
 * the default only when none is set: a deployment that gets its tokens from an identity provider
 * must not also accept tokens signed with a secret printed in the README.
 */
function readJwt(read: Read, nodeEnv: string): JwtConfig {
  const publicKey = readPublicKey(read("JWT_PUBLIC_KEY"));
  const jwksUrl = readJwksUrl(read("JWT_JWKS_URL"));
  const explicitSecret = read("JWT_SECRET") ?? readSecretFile(read("JWT_SECRET_FILE"));
  const secret =
    explicitSecret ??
    (publicKey === undefined && jwksUrl === undefined ? defaults.JWT_SECRET : undefined);
  if (nodeEnv === "production" && secret !== undefined) {
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
  // Everything the configured keys can verify, unless pinned: HS256 for the secret, the public
  // key's own algorithms, and every asymmetric one for a JWKS (each of its keys is used only
  // for the algorithms of its type, and its `alg` when it names one).
  const available = new Set<string>([
    ...(secret === undefined ? [] : ["HS256"]),
    ...(publicKey === undefined ? [] : algorithmsForKey(publicKey)),
    ...(jwksUrl === undefined ? [] : SUPPORTED_ALGORITHMS.filter((alg) => alg !== "HS256")),
  ]);
  const pinned = read("JWT_ALGORITHMS");
  let algorithms: readonly string[];
  if (pinned === undefined) {
    // A PEM key's default is the first algorithm of its type (RS256, ES256, ...), not all of them.
    const pemDefault = publicKey === undefined ? [] : algorithmsForKey(publicKey).slice(0, 1);
    algorithms =
      jwksUrl === undefined
        ? [...(secret === undefined ? [] : ["HS256"]), ...pemDefault]
        : [...available];
  } else {
    algorithms = [...new Set(pinned.split(",").map((alg) => alg.trim()))];
    for (const alg of algorithms) {
      if (!SUPPORTED_ALGORITHMS.includes(alg)) {
        throw new ConfigError(
          `JWT_ALGORITHMS: "${alg}" is not supported; use some of ${SUPPORTED_ALGORITHMS.join(", ")}.`,
        );
      }
      if (!available.has(alg)) {
        throw new ConfigError(
          `JWT_ALGORITHMS: no configured key verifies ${alg} (${alg === "HS256" ? "set JWT_SECRET" : "set JWT_PUBLIC_KEY of a matching type, or JWT_JWKS_URL"}).`,
        );
      }
    }
  }
  const audience = read("JWT_AUDIENCE");
  const maxAge = read("JWT_MAX_AGE");
  const jwksCooldownMs = integer(read, "JWT_JWKS_COOLDOWN_MS", 0, 86_400_000);
  return Object.freeze({
    secret,
    publicKey,
    jwksUrl,
    issuer: read("JWT_ISSUER") ?? defaults.JWT_ISSUER,
    audience,
    algorithms: Object.freeze(algorithms),
    maxAgeSeconds: maxAge === undefined ? undefined : readDuration("JWT_MAX_AGE", maxAge),
    jwksCooldownMs,
    // Never below the cooldown: a refresh is a request, and the cooldown bounds them all.
    jwksCacheMaxAgeMs: Math.max(
      jwksCooldownMs,
      integer(read, "JWT_JWKS_CACHE_MAX_AGE_MS", 1000, 86_400_000 * 30),
    ),
  });
}

/**
 * JWT_PUBLIC_KEY: a PEM public key (SPKI "PUBLIC KEY", or PKCS#1 "RSA PUBLIC KEY"). Environment
 * files often hold it on one line with literal "\n"s, which are turned into newlines.
 */
function readPublicKey(pem: string | undefined): KeyObject | undefined {
  if (pem === undefined) return undefined;
  const text = pem.replace(/\\n/g, "\n");
  if (/PRIVATE KEY-----/.test(text)) {
    throw new ConfigError(
      "JWT_PUBLIC_KEY holds a private key: give the node the public key only (`openssl pkey -in key.pem -pubout`).",
    );
  }
  let key: KeyObject;
  try {
    key = createPublicKey(text);
  } catch {
    throw new ConfigError(
      'JWT_PUBLIC_KEY is not a PEM public key (it must start with "-----BEGIN PUBLIC KEY-----").',
    );
  }
  if (algorithmsForKey(key).length === 0) {
    throw new ConfigError(
      `JWT_PUBLIC_KEY is a ${key.asymmetricKeyType ?? "unknown"} key${key.asymmetricKeyDetails?.namedCurve === undefined ? "" : ` on ${key.asymmetricKeyDetails.namedCurve}`}; supported are RSA (RS256), EC P-256 (ES256), P-384 (ES384), P-521 (ES512) and Ed25519 (EdDSA).`,
    );
  }
  return key;
}

function readJwksUrl(text: string | undefined): URL | undefined {
  if (text === undefined) return undefined;
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new ConfigError(`JWT_JWKS_URL must be an http:// or https:// URL; got "${text}".`);
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    throw new ConfigError(`JWT_JWKS_URL must be an http:// or https:// URL; got "${text}".`);
  }
  return url;
}

/** A duration in whole seconds: `3600`, or with a unit, `90s`, `30m`, `24h`, `7d`. */
function readDuration(name: string, text: string): number {
  const match = /^(\d{1,9})([smhd]?)$/.exec(text);
  const unit = { "": 1, s: 1, m: 60, h: 3600, d: 86_400 }[(match?.[2] ?? "") as "" | "s"];
  const seconds = Number(match?.[1]) * unit;
  if (match === null || seconds < 1) {
    throw new ConfigError(
      `${name} must be a duration of at least one second, like 3600, 90s, 30m, 24h or 7d; got "${text}".`,
    );
  }
  return seconds;
}

/**
 * ALLOWED_ORIGINS: comma-separated origins, each exact (`https://app.example.com`, with a port
 * when not the default one) or with a wildcard for any subdomain (`https://*.example.com`, which
 * does not match `https://example.com` itself). Kept lower-case, as browsers send them.
 */
function readOrigins(text: string | undefined): readonly string[] | undefined {
  if (text === undefined) return undefined;
  const origins = text
    .split(",")
    .map((entry) => entry.trim().toLowerCase())
    .filter((entry) => entry !== "");
  for (const origin of origins) {
    if (!/^https?:\/\/(\*\.)?[a-z0-9-]+(\.[a-z0-9-]+)*(:\d{1,5})?$/.test(origin)) {
      throw new ConfigError(
        `ALLOWED_ORIGINS: "${origin}" is not an origin like https://app.example.com or https://*.example.com (scheme, host and optional port; no path, no trailing slash).`,
      );
    }
  }
  if (origins.length === 0) throw new ConfigError("ALLOWED_ORIGINS is set but names no origin.");
  return Object.freeze(origins);
}

function integer(read: Read, name: keyof typeof defaults, min: number, max: number): number {
  const raw = read(name);
  if (raw === undefined) return defaults[name] as number;
  const value = Number(raw);
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new ConfigError(`${name} must be a whole number from ${min} to ${max}; got "${raw}".`);
  }
  return value;
}
