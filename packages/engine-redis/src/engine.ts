/**
 * The Redis engine: connections, health, liveness timers and shutdown. The ports themselves are
 * in broker.ts, presence.ts, messages.ts and rate-limiter.ts; keys in keys.ts; Lua in scripts.ts.
 *
 * Two connections per node:
 * - the command connection runs every command and script. Its offline queue is off and it never
 *   re-sends a command after a reconnect (`enableOfflineQueue: false`,
 *   `autoResendUnfulfilledCommands: false`, `maxRetriesPerRequest: 0`): during an outage a call
 *   fails at once with EngineUnavailableError instead of waiting, and an append whose reply was
 *   lost is never run a second time behind the caller's back.
 * - the subscriber connection carries pub/sub only (Broker). The broker re-subscribes its channels
 *   after a reconnect (ioredis does on Redis Cluster). Presence deltas published while it was down are lost:
 *   once its re-subscriptions are confirmed, the node takes a new presence snapshot
 *   (presence-mirror.ts), and announces what changed meanwhile.
 * Both reconnect forever with a capped backoff (min(attempt × 100, 2000) ms).
 *
 * Slow is not down. A connection that stops answering is replaced rather than waited on, but
 * "stops answering" is judged by the engine's own watchdog, not by any command's socket timeout:
 * every WATCHDOG_MS it looks at each connection, and declares it dead only when commands have
 * been waiting and no byte at all has come back for LIVENESS_TIMEOUT_MS — not counting the time
 * the watchdog itself ran late, during which replies may have sat unread in the socket because
 * this node's event loop was busy. A Redis working through a burst keeps sending replies, so
 * it is never mistaken for a dead one; a blackholed link sends nothing and is replaced within
 * about LIVENESS_TIMEOUT_MS. (ioredis' socketTimeout, which this replaces, fires on a timer
 * armed at a write: when 100,000 clients left within 3 s, a node's event loop was busy for
 * longer than it, the timer fired before the replies waiting in the socket were read, and the
 * node declared Redis lost in the middle of the storm.) ioredis' socketTimeout stays as a
 * backstop far above it (BACKSTOP_SOCKET_TIMEOUT_MS).
 *
 * health() reads a flag: ok only while both connections are ready (for the subscriber: its
 * re-subscriptions confirmed and the presence snapshot tried; for the command connection:
 * presence re-asserted after a reconnect). Connection loss and recovery are logged once each,
 * not once per retry.
 *
 * Every heartbeatIntervalMs one script (TICK) refreshes this node's liveness key and sweeps dead
 * nodes; see presence.ts for the liveness design. The heartbeat also retries what an outage left
 * undone: a presence re-assert, a presence snapshot.
 *
 * Redis Cluster (`clusterNodes`, REDIS_CLUSTER_NODES): the two connections become two ioredis
 * `Cluster` clients with the same options per node connection. The command client routes each
 * script by its keys' slot and follows MOVED and ASK (resharding) and a failover (it refreshes
 * the slot map when a node stops answering or answers MOVED/CLUSTERDOWN, and sends later calls
 * to the promoted replica; a call in flight to the lost master fails like any outage, and the
 * client retries it). The subscriber client uses sharded pub/sub (broker.ts). Keys are hash-
 * tagged (keys.ts); operations that span slots are split into idempotent steps
 * (cluster-messages.ts, cluster-groups.ts, cluster-scripts.ts).
 *
 * `waitReplicas` (REDIS_WAIT_REPLICAS): each step of a direct message is followed, on the same
 * node, by WAIT for that many replicas, before the message is acked (script-runner.ts).
 */
import {
  DEFAULT_GROUP_LIMITS,
  DEFAULT_RETENTION,
  type Engine,
  type EngineHealth,
  EngineUnavailableError,
  type GroupLimits,
  NO_QUOTAS,
  type QuotaOptions,
  type RetentionOptions,
} from "@mrezhen/engine";
import { Cluster, type ClusterOptions, Redis, type RedisOptions } from "ioredis";
import { BackendKeys } from "./backend-keys.js";
import { BACKEND_SCRIPTS } from "./backend-scripts.js";
import { RedisBroker } from "./broker.js";
import { type AppendStep, ClusterMessageStore } from "./cluster-messages.js";
import { CLUSTER_SCRIPTS } from "./cluster-scripts.js";
import { RedisEventQueue } from "./event-queue.js";
import {
  DEFAULT_GROUP_FAN_OUT,
  GROUP_SCRIPTS,
  type GroupFanOutOptions,
  RedisGroupStore,
} from "./groups.js";
import { Keys } from "./keys.js";
import { RedisMessageStore } from "./messages.js";
import { RedisPresenceStore } from "./presence.js";
import { RedisRateLimiter } from "./rate-limiter.js";
import { RedisRevocationStore } from "./revocations.js";
import {
  commandErrors,
  loadScripts,
  type RedisClient,
  setWaitReplicas,
  toEngineError,
} from "./script-runner.js";
import { ALL_SCRIPTS } from "./scripts.js";

/** pino-compatible. */
export interface Logger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
  /** Optional: what a node may lose without harm (a background fan-out the heartbeat finishes). */
  debug?(obj: object, msg?: string): void;
}

export interface RedisEngineOptions {
  /** REDIS_URL, e.g. `redis://:password@redis:6379/0` (ignored with clusterNodes). */
  readonly url: string;
  /**
   * REDIS_CLUSTER_NODES: seed nodes (`host:port`) of a Redis Cluster. Set, the engine runs in
   * cluster mode (hash-tagged keys, sharded pub/sub, direct messages in steps); any few nodes
   * of the cluster will do, the client discovers the rest.
   */
  readonly clusterNodes?: readonly string[];
  /**
   * REDIS_WAIT_REPLICAS: replicas that must have each step of a direct message (WAIT) before
   * it is acked. Default 0: acked once the master has it (see the README for the loss window).
   */
  readonly waitReplicas?: number;
  /** Cluster mode: how long a DM may stay half-done before the next send repairs it. Default 10 s. */
  readonly repairAfterMs?: number;
  /** REDIS_KEY_PREFIX (the server's default is `mrezhen:`): prefixes every key and channel. */
  readonly keyPrefix: string;
  /** NODE_ID: this node's identity for presence liveness. Must be unique among live nodes. */
  readonly nodeId: string;
  readonly rateLimit: { readonly limit: number; readonly windowMs: number };
  /**
   * How long message bodies live (PX) and how many newest entries each inbox, offline queue,
   * conversation index and conversation list keeps. Default {@link DEFAULT_RETENTION} (the
   * memory engine's: 30 days, 10,000 entries). See keys.ts for what expires and what does not.
   */
  readonly retention?: RetentionOptions;
  /** Per-sender daily quotas of appendIfAllowed (key `quota:<user>`). Default {@link NO_QUOTAS}. */
  readonly quotas?: QuotaOptions;
  /** Group limits. Default {@link DEFAULT_GROUP_LIMITS}. */
  readonly groups?: GroupLimits;
  /**
   * Standalone Redis: the size above which a group's entries are written into the members'
   * inboxes in chunks, and the members per chunk (groups.ts). Default
   * {@link DEFAULT_GROUP_FAN_OUT}.
   */
  readonly groupFanOut?: Partial<GroupFanOutOptions>;
  /** Default: silent. */
  readonly logger?: Logger;
  /** How often the node refreshes its liveness key and sweeps dead nodes. Default 3000. */
  readonly heartbeatIntervalMs?: number;
  /** A node whose liveness key is older than this is dead. Default 9000. */
  readonly nodeTtlMs?: number;
  /**
   * What createRedisEngine does when Redis cannot be reached at start. false (the default): it
   * rejects with EngineUnavailableError. true: it resolves at once with an engine that behaves as
   * during an outage (health() not ok, every call failing with EngineUnavailableError) and keeps
   * trying in the background, with the reconnect backoff; once Redis answers, the engine starts
   * as it would have (scripts, node registration, presence snapshot) and health() turns ok. A
   * server process then comes up unready instead of exiting into a restart loop.
   */
  readonly waitForRedis?: boolean;
}

const DEFAULT_HEARTBEAT_INTERVAL_MS = 3000;
const DEFAULT_NODE_TTL_MS = 9000;
/**
 * A connection with commands waiting and nothing received for this long (this node's own lag
 * not counted) is presumed dead and replaced. A live Redis answers something within it even when
 * busy: a script running longer than Redis' lua-time-limit (5 s) gets BUSY replies.
 */
export const LIVENESS_TIMEOUT_MS = 5000;
/** How often the watchdog looks at the connections. */
const WATCHDOG_MS = 500;
/** ioredis' own socket timeout, only for a node whose event loop never gets to the watchdog. */
const BACKSTOP_SOCKET_TIMEOUT_MS = 60_000;
const CONNECT_TIMEOUT_MS = 5000;
const MAX_RECONNECT_DELAY_MS = 2000;

type Role = "command" | "subscriber";

/**
 * Connects to Redis, loads the scripts, clears what a previous process with this node id left,
 * registers the node and starts its heartbeat. Rejects with EngineUnavailableError when Redis
 * cannot be reached (nothing is left running then), unless `waitForRedis` is set: then it
 * resolves at once and starts when Redis answers.
 *
 * @example
 * const engine = await createRedisEngine({
 *   url: "redis://127.0.0.1:6379",
 *   keyPrefix: "mrezhen:",
 *   nodeId: "node-1",
 *   rateLimit: { limit: 30, windowMs: 60_000 },
 * });
 */
export async function createRedisEngine(options: RedisEngineOptions): Promise<Engine> {
  const engine = new RedisEngine(options);
  await engine.start();
  return engine;
}

/**
 * Stops an engine the way `kill -9` would: timers stop and connections drop, without close()'s
 * cleanup, so its registrations stay in Redis until other nodes sweep them. For tests only.
 */
export function haltRedisEngineForTests(engine: Engine): void {
  if (!(engine instanceof RedisEngine)) throw new TypeError("not a Redis engine");
  engine.halt();
}

/**
 * Cluster mode, for tests only: `fault` is called after each step of every append, and an error
 * it throws interrupts the append there (as a node dying between steps would). undefined: none.
 */
export function injectClusterFaultForTests(
  engine: Engine,
  fault: ((step: AppendStep) => void) | undefined,
): void {
  const steps = engine instanceof RedisEngine ? engine.groups.steps : undefined;
  if (!(engine instanceof RedisEngine) || !(engine.messages instanceof ClusterMessageStore)) {
    throw new TypeError("not a Redis Cluster engine");
  }
  engine.messages.faultForTests = fault;
  if (steps !== undefined) steps.faultForTests = fault;
}

/**
 * Standalone Redis, for tests only: `fault` is called (and awaited) before each fan-out chunk
 * this engine runs in the background after acking a large group's entry (groups.ts, drive:
 * chunk 1, 2, … of each driver run); an error it throws stops that driver there, as a node dying
 * after its ack would, and a promise it returns pauses it. undefined: none.
 */
export function injectGroupFanOutFaultForTests(
  engine: Engine,
  fault: ((chunk: number) => void | Promise<void>) | undefined,
): void {
  if (!(engine instanceof RedisEngine)) throw new TypeError("not a Redis engine");
  engine.groups.faultForTests = fault;
}

const SILENT: Logger = { info() {}, warn() {}, error() {} };
const HEALTHY: EngineHealth = { ok: true };
const STARTING: EngineHealth = { ok: false, reason: "starting" };
const WAITING: EngineHealth = { ok: false, reason: "redis unreachable since start" };
const CLOSED: EngineHealth = { ok: false, reason: "engine closed" };
const UNREACHABLE: EngineHealth = { ok: false, reason: "redis unreachable" };
const SUBSCRIBER_DOWN: EngineHealth = { ok: false, reason: "redis subscriber connection down" };

class RedisEngine implements Engine {
  readonly kind = "redis";
  readonly broker: RedisBroker;
  readonly presence: RedisPresenceStore;
  readonly messages: RedisMessageStore;
  readonly rateLimiter: RedisRateLimiter;
  readonly groups: RedisGroupStore;
  readonly revocations: RedisRevocationStore;
  readonly events: RedisEventQueue;

  private readonly backendKeys: BackendKeys;
  private readonly command: RedisClient;
  private readonly subscriber: RedisClient;
  private readonly keys: Keys;
  private readonly logger: Logger;
  private readonly heartbeatIntervalMs: number;

  private state: "starting" | "running" | "closed" = "starting";
  private commandReady = false;
  private subscriberReady = false;
  private healthState: EngineHealth = STARTING;
  /** When each connection was lost, while it is down (for one log line per outage). */
  private readonly downSince: Record<Role, number | undefined> = {
    command: undefined,
    subscriber: undefined,
  };
  private readonly errorLogged: Record<Role, boolean> = { command: false, subscriber: false };
  /** When each connection last received bytes (performance.now()). */
  private readonly lastDataAt: Record<Role, number> = { command: 0, subscriber: 0 };
  /** Since when the watchdog has seen commands waiting on each connection, if it has. */
  private readonly waitingSince: Record<Role, number | undefined> = {
    command: undefined,
    subscriber: undefined,
  };
  private watchdogTimer: NodeJS.Timeout | undefined;
  private watchdogAt = 0;
  /** The latest connection error, for the message when the first connection fails. */
  private lastError: unknown;
  private tickTimer: NodeJS.Timeout | undefined;
  /** The next start attempt while Redis has not answered yet (waitForRedis). */
  private startTimer: NodeJS.Timeout | undefined;
  /** A start attempt failed and the engine waits for Redis (waitForRedis). */
  private waiting = false;
  private closing: Promise<void> | undefined;
  /** The broadcast channel was subscribed once (start): ioredis re-subscribes it from then on. */
  private broadcastSubscribed = false;
  /** Its subscription is confirmed on the current subscriber connection: snapshots may be taken. */
  private broadcastLive = false;

  constructor(private readonly options: RedisEngineOptions) {
    validate(options);
    this.logger = options.logger ?? SILENT;
    this.heartbeatIntervalMs = options.heartbeatIntervalMs ?? DEFAULT_HEARTBEAT_INTERVAL_MS;
    const seeds = options.clusterNodes;
    this.keys = new Keys(options.keyPrefix, options.nodeId, seeds !== undefined);
    if (seeds === undefined) {
      this.command = new Redis(options.url, clientOptions(options.nodeId, "command"));
      this.subscriber = new Redis(options.url, clientOptions(options.nodeId, "subscriber"));
    } else {
      const nodes = seeds.map(seedNode);
      this.command = new Cluster(nodes, clusterOptions(options.nodeId, "command"));
      this.subscriber = new Cluster(nodes, clusterOptions(options.nodeId, "subscriber"));
    }
    setWaitReplicas(this.command, options.waitReplicas ?? 0);
    this.watch(this.command, "command");
    this.watch(this.subscriber, "subscriber");

    this.broker = new RedisBroker(this.subscriber, this.command, this.keys, this.logger);
    this.subscriber.on(seeds === undefined ? "message" : "smessage", this.broker.dispatch);
    if (seeds !== undefined) {
      // A shard's subscriber connection was lost (its master failed, or slots moved): deltas
      // published meanwhile are lost to this node, so hold them until the re-subscriptions are
      // confirmed (ioredis then says subscribersReady), and take a new snapshot then. Any
      // shard's loss does it (cheap: a snapshot per failover), not only the `{p}` slot's.
      this.subscriber.on("-subscriber", () => {
        if (this.broadcastSubscribed) this.broker.mirror.invalidate();
      });
      this.subscriber.on("subscribersReady", () => {
        if (this.broadcastSubscribed && this.state === "running") {
          this.broadcastLive = true;
          this.broker.mirror.resync().catch(() => {}); // The heartbeat retries (resyncIfNeeded).
        }
      });
    }
    this.presence = new RedisPresenceStore(
      this.command,
      this.keys,
      options.nodeId,
      options.nodeTtlMs ?? DEFAULT_NODE_TTL_MS,
      this.broker.mirror.online,
    );
    const storeArguments = [
      this.command,
      this.keys,
      options.retention ?? DEFAULT_RETENTION,
      options.rateLimit,
      options.quotas ?? NO_QUOTAS,
    ] as const;
    if (seeds === undefined) {
      this.messages = new RedisMessageStore(...storeArguments);
    } else {
      const store = new ClusterMessageStore(...storeArguments);
      store.logger = this.logger;
      store.repairAfterMs = options.repairAfterMs ?? store.repairAfterMs;
      this.messages = store;
    }
    this.rateLimiter = new RedisRateLimiter(this.command, this.keys, options.rateLimit);
    this.groups = new RedisGroupStore(
      this.command,
      this.keys,
      this.messages,
      options.retention ?? DEFAULT_RETENTION,
      options.rateLimit,
      options.groups ?? DEFAULT_GROUP_LIMITS,
      this.broker,
      { ...DEFAULT_GROUP_FAN_OUT, ...options.groupFanOut },
      this.logger,
    );
    this.backendKeys = new BackendKeys(options.keyPrefix, seeds !== undefined);
    this.revocations = new RedisRevocationStore(this.command, this.backendKeys);
    this.events = new RedisEventQueue(this.command, this.backendKeys, options.nodeId);
    const revocationChannel = this.backendKeys.revocationChannel;
    this.subscriber.on(
      seeds === undefined ? "message" : "smessage",
      (channel: string, payload: string) => {
        if (channel === revocationChannel) this.revocations.receive(payload);
      },
    );
  }

  async start(): Promise<void> {
    try {
      await this.startOnce();
    } catch (error) {
      if (this.options.waitForRedis !== true || !(error instanceof EngineUnavailableError)) {
        throw error;
      }
      this.logger.warn(
        { err: error },
        "redis cannot be reached at start; serving as during an outage until it answers",
      );
      this.waiting = true;
      this.updateHealth();
      this.retryStart(1);
    }
  }

  /** One more start attempt after the reconnect backoff, until one succeeds or close(). */
  private retryStart(attempt: number): void {
    if (this.state !== "starting") return;
    this.startTimer = setTimeout(() => {
      this.startOnce().then(
        () => this.logger.info({}, "redis answered; the engine has started"),
        (error: unknown) => {
          if (!(toEngineError(error) instanceof EngineUnavailableError)) {
            this.logger.error({ err: error }, "redis engine start failed; retrying");
          }
          this.retryStart(attempt + 1);
        },
      );
    }, reconnectDelay(attempt));
    this.startTimer.unref();
  }

  /** Connects both connections and sets up the node; on failure leaves nothing connected. */
  private async startOnce(): Promise<void> {
    try {
      await Promise.all([this.command.connect(), this.subscriber.connect()]);
    } catch (error) {
      this.dropConnections();
      // connect() only says "Connection is closed."; the 'error' event said why.
      const cause = this.lastError ?? error;
      const message = cause instanceof Error ? cause.message : String(cause);
      const seeds = this.options.clusterNodes;
      throw new EngineUnavailableError(
        seeds === undefined
          ? `cannot reach Redis at ${redactUrl(this.options.url)} (${message}): check REDIS_URL and that Redis is running`
          : `cannot reach the Redis Cluster at ${seeds.join(",")} (${message}): check REDIS_CLUSTER_NODES and that the cluster is up (cluster_state:ok)`,
        { cause },
      );
    }
    try {
      await loadScripts(
        this.command,
        this.keys.cluster
          ? [...ALL_SCRIPTS, ...BACKEND_SCRIPTS, ...GROUP_SCRIPTS, ...CLUSTER_SCRIPTS]
          : [...ALL_SCRIPTS, ...BACKEND_SCRIPTS, ...GROUP_SCRIPTS],
      );
      await this.broker.listen(this.keys.broadcastChannel);
      await this.broker.listen(this.backendKeys.revocationChannel);
      // Group entries for this node's members (groups.ts): subscribed before the node registers
      // any connection, so every entry published for a member registered here reaches it.
      // (Redis Cluster: a group's steps publish on each member's channel instead.)
      if (!this.keys.cluster) await this.broker.listen(this.keys.thisNodeChannel);
      this.broadcastSubscribed = true;
      this.broadcastLive = this.subscriber.status === "ready";
      // Clears registrations a previous process with this node id left, then registers the node.
      const cleared = await this.presence.reassert();
      if (cleared > 0) {
        this.logger.info(
          { users: cleared },
          "cleared presence left by a previous run of this node",
        );
      }
      // The online set, read once the subscription is confirmed: every later change is a delta.
      await this.broker.mirror.resync();
      // Likewise the revocations: every later one reaches this node on their channel.
      await this.revocations.load();
    } catch (error) {
      this.dropConnections();
      throw toEngineError(error);
    }
    // close() came while this attempt was under way: shutdown() takes it from here.
    if (this.state !== "starting") return;
    this.state = "running";
    this.updateHealth();
    this.scheduleTick();
    this.watchdogAt = performance.now();
    this.watchdogTimer = setInterval(() => this.watchdog(), WATCHDOG_MS);
    this.watchdogTimer.unref();
    this.logger.info({ nodeId: this.options.nodeId }, "redis engine started");
  }

  health(): EngineHealth {
    return this.healthState;
  }

  commandErrors(): { readonly unavailable: number; readonly reply: number } {
    return commandErrors;
  }

  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  /** See haltRedisEngineForTests. */
  halt(): void {
    this.state = "closed";
    clearTimeout(this.tickTimer);
    clearTimeout(this.startTimer);
    clearInterval(this.watchdogTimer);
    this.events.close();
    this.dropConnections();
    this.updateHealth();
    this.closing ??= Promise.resolve();
  }

  private async shutdown(): Promise<void> {
    const wasRunning = this.state === "running";
    this.state = "closed";
    clearTimeout(this.tickTimer);
    clearTimeout(this.startTimer);
    clearInterval(this.watchdogTimer);
    this.updateHealth();
    if (wasRunning && this.commandReady) {
      // Large groups' fan-outs this node acked and is still writing (groups.ts, drive): up to 2 s,
      // then the other nodes' heartbeats finish them.
      await this.groups.settle(2000);
      try {
        await this.presence.unregister();
      } catch (error) {
        // Other nodes sweep this node's registrations once its liveness key expires.
        this.logger.warn({ err: error }, "could not unregister this node from Redis");
      }
    }
    this.events.close();
    await Promise.all([quit(this.command), quit(this.subscriber)]);
  }

  private watch(client: RedisClient, role: Role): void {
    client.on("error", (error: unknown) => this.connectionError(role, error));
    client.on("close", () => this.connectionLost(role));
    client.on("ready", () => this.connectionReady(role));
    // Every new socket: any byte from Redis proves the link alive (see the watchdog).
    client.on("connect", () => {
      this.lastDataAt[role] = performance.now();
      this.waitingSince[role] = undefined;
      // (A cluster client has no one socket: the watchdog leaves it to its nodes' timeouts.)
      if (client instanceof Cluster) return;
      client.stream.on("data", () => {
        this.lastDataAt[role] = performance.now();
      });
    });
  }

  /**
   * Replaces a connection that has had commands waiting with no byte back for
   * LIVENESS_TIMEOUT_MS. The time this timer ran late is taken off the silence: while the event
   * loop was busy elsewhere, replies may have arrived and not been read yet.
   */
  private watchdog(): void {
    const now = performance.now();
    const late = Math.max(0, now - this.watchdogAt - WATCHDOG_MS);
    this.watchdogAt = now;
    for (const role of ["command", "subscriber"] as const) {
      const client = role === "command" ? this.command : this.subscriber;
      // A cluster client has a connection per node, each with its own socket timeout; ioredis
      // replaces the one that times out and refreshes the slot map.
      if (client instanceof Cluster) continue;
      if (client.status !== "ready" || client.commandQueue.length === 0) {
        this.waitingSince[role] = undefined;
        continue;
      }
      const waitingSince = this.waitingSince[role] ?? now;
      this.waitingSince[role] = waitingSince;
      const silentMs = now - Math.max(this.lastDataAt[role], waitingSince) - late;
      if (silentMs < LIVENESS_TIMEOUT_MS) continue;
      this.waitingSince[role] = undefined;
      // ioredis rejects what was waiting, emits close, and reconnects: an outage as any other.
      client.stream.destroy(
        new Error(`no reply from Redis for ${Math.round(silentMs)} ms while commands were waiting`),
      );
    }
  }

  /** Logged once until the connection is ready again: an outage must not log every retry. */
  private connectionError(role: Role, error: unknown): void {
    this.lastError = error;
    if (this.state === "closed" || this.errorLogged[role]) return;
    this.errorLogged[role] = true;
    this.logger.warn({ role, err: error }, "redis connection error");
  }

  private connectionLost(role: Role): void {
    if (role === "command") {
      this.commandReady = false;
    } else {
      this.subscriberReady = false;
      this.broadcastLive = false;
      // Deltas published from now on are lost to this node: hold any until the next snapshot.
      if (this.broadcastSubscribed) this.broker.mirror.invalidate();
    }
    this.updateHealth();
    if (this.downSince[role] !== undefined) return;
    this.downSince[role] = Date.now();
    if (this.state !== "closed") this.logger.warn({ role }, "redis connection lost; reconnecting");
  }

  private connectionReady(role: Role): void {
    if (this.state === "closed") return;
    const client = role === "command" ? this.command : this.subscriber;
    const downSince = this.downSince[role];
    this.downSince[role] = undefined;
    this.errorLogged[role] = false;
    if (downSince !== undefined && this.state === "running") {
      this.logger.info({ role, downMs: Date.now() - downSince }, "redis connection restored");
    }
    // Readiness is reported only once what the reconnect must restore is restored.
    const restore: Promise<unknown> =
      role === "subscriber"
        ? // Replies come in order: on Redis Cluster the PONG follows the confirmations of
          // ioredis' re-subscribes; on a standalone Redis the broker's own are awaited first.
          this.broker
            .resubscribe()
            .then(() => this.subscriber.ping())
            .then(() => Promise.all([this.broker.dropStale(), this.resubscribed()]))
        : this.state === "running"
          ? this.reassert("reconnected").finally(() => this.resyncIfNeeded())
          : Promise.resolve();
    restore
      .catch(() => {}) // The next outage or tick reports what matters.
      .finally(() => {
        const ready = client.status === "ready";
        if (role === "command") this.commandReady = ready;
        else this.subscriberReady = ready;
        this.updateHealth();
      });
  }

  /**
   * The subscriber's re-subscriptions are confirmed after a reconnect: what was published in
   * between is lost, so the presence mirror starts again from a new snapshot.
   */
  private async resubscribed(): Promise<void> {
    if (!this.broadcastSubscribed || this.state === "closed") return;
    this.broadcastLive = true;
    // Revocations published while the subscriber was away are in the hash.
    await Promise.all([this.broker.mirror.resync(), this.revocations.load()]);
  }

  /** Retries a presence snapshot that an outage prevented (only while the broadcast is live). */
  private async resyncIfNeeded(): Promise<void> {
    const mirror = this.broker.mirror;
    if (this.broadcastLive && !mirror.synced && !mirror.syncInProgress) await mirror.resync();
  }

  private async reassert(why: string): Promise<void> {
    try {
      const changed = await this.presence.reassert();
      if (changed > 0)
        this.logger.info({ why, users: changed }, "re-asserted this node's presence");
    } catch (error) {
      if (!(error instanceof EngineUnavailableError)) {
        this.logger.error({ err: error, why }, "presence re-assert failed");
      }
      throw error;
    }
  }

  private scheduleTick(): void {
    if (this.state !== "running") return;
    this.tickTimer = setTimeout(() => void this.tick(), this.heartbeatIntervalMs);
    this.tickTimer.unref();
  }

  /** Heartbeat and sweep; it keeps running through outages and resumes by itself. */
  private async tick(): Promise<void> {
    try {
      if (this.commandReady) {
        const { wasAlive, swept } = await this.presence.tick();
        if (swept > 0) this.logger.info({ nodes: swept }, "swept dead nodes' presence");
        if (!wasAlive) {
          this.logger.warn({}, "this node's liveness key had expired; re-asserting its presence");
          await this.reassert("expired");
        } else if (this.presence.needsReassert) {
          await this.reassert("unconfirmed change");
        }
        await this.resyncIfNeeded();
        // Large groups' fan-outs left by a node that died (groups.ts); not awaited, so that a
        // long backlog never delays the liveness refresh.
        this.groups.finishFanOuts().catch((error: unknown) => {
          if (!(toEngineError(error) instanceof EngineUnavailableError)) {
            this.logger.error({ err: error }, "finishing group fan-outs failed");
          }
        });
      }
      // Gives the watchdog a command to wait for on the subscriber: a half-open socket is noticed.
      if (this.subscriberReady) await this.subscriber.ping();
    } catch (error) {
      // Outages are logged by the connection listeners; anything else is a bug worth seeing.
      if (this.state === "running" && !(toEngineError(error) instanceof EngineUnavailableError)) {
        this.logger.error({ err: error }, "heartbeat failed");
      }
    } finally {
      this.scheduleTick();
    }
  }

  private updateHealth(): void {
    this.healthState =
      this.state === "closed"
        ? CLOSED
        : this.state === "starting"
          ? this.waiting
            ? WAITING
            : STARTING
          : !this.commandReady
            ? UNREACHABLE
            : !this.subscriberReady
              ? SUBSCRIBER_DOWN
              : HEALTHY;
  }

  private dropConnections(): void {
    this.command.disconnect();
    this.subscriber.disconnect();
  }
}

function clientOptions(nodeId: string, role: Role) {
  return {
    lazyConnect: true,
    enableOfflineQueue: false,
    autoResendUnfulfilledCommands: false,
    maxRetriesPerRequest: 0,
    // The broker re-subscribes itself, handling failures (RedisBroker.resubscribe).
    autoResubscribe: false,
    retryStrategy: reconnectDelay,
    connectTimeout: CONNECT_TIMEOUT_MS,
    socketTimeout: BACKSTOP_SOCKET_TIMEOUT_MS,
    // For CLIENT LIST; names cannot contain spaces.
    connectionName: `mrezhen:${nodeId}:${role}`.replace(/[^\w.:-]/g, "_"),
  } satisfies RedisOptions;
}

function reconnectDelay(attempt: number): number {
  return Math.min(attempt * 100, MAX_RECONNECT_DELAY_MS);
}

/**
 * The same per-connection behaviour as standalone mode (no offline queue, no resend, timeouts)
 * for every node connection, and the cluster's own reconnect and redirection settings: a
 * failover's CLUSTERDOWN or TRYAGAIN is retried shortly, MOVED/ASK are followed.
 */
function clusterOptions(nodeId: string, role: Role) {
  const { lazyConnect, retryStrategy, ...perNode } = clientOptions(nodeId, role);
  return {
    lazyConnect,
    enableOfflineQueue: false,
    shardedSubscribers: role === "subscriber",
    clusterRetryStrategy: retryStrategy,
    // A failover (a replica promoted) makes slots unserved for about cluster-node-timeout.
    retryDelayOnFailover: 100,
    retryDelayOnClusterDown: 100,
    retryDelayOnTryAgain: 100,
    maxRedirections: 16,
    slotsRefreshTimeout: CONNECT_TIMEOUT_MS,
    // ioredis restores sharded subscriptions per shard (its subscriber group handles failures).
    redisOptions: { ...perNode, autoResubscribe: true },
  } satisfies ClusterOptions;
}

/** `host:port` of REDIS_CLUSTER_NODES as ioredis wants it. */
function seedNode(seed: string): { host: string; port: number } {
  const at = seed.lastIndexOf(":");
  return { host: seed.slice(0, at), port: Number(seed.slice(at + 1)) };
}

async function quit(client: RedisClient): Promise<void> {
  try {
    await client.quit();
  } catch {
    client.disconnect();
  }
}

function validate(options: RedisEngineOptions): void {
  const problems: string[] = [];
  const seeds = options.clusterNodes;
  if (seeds === undefined && (typeof options.url !== "string" || options.url === "")) {
    problems.push("url is empty: set REDIS_URL, e.g. redis://127.0.0.1:6379");
  }
  if (seeds !== undefined) {
    if (seeds.length === 0) problems.push("clusterNodes is empty: give at least one host:port");
    for (const seed of seeds) {
      const port = Number(seed.slice(seed.lastIndexOf(":") + 1));
      if (!/^[^:]+:\d+$/.test(seed) && !/^\[.+\]:\d+$/.test(seed)) {
        problems.push(`clusterNodes: "${seed}" is not host:port`);
      } else if (!Number.isInteger(port) || port < 1 || port > 65_535) {
        problems.push(`clusterNodes: "${seed}" has no valid port`);
      }
    }
    if (typeof options.keyPrefix === "string" && /[{}]/.test(options.keyPrefix)) {
      // A brace in the prefix would become (part of) every key's hash tag.
      problems.push(
        `keyPrefix must not contain { or } in cluster mode (got "${options.keyPrefix}")`,
      );
    }
  }
  const replicas = options.waitReplicas ?? 0;
  if (!Number.isSafeInteger(replicas) || replicas < 0) {
    problems.push(`waitReplicas must be a whole number ≥ 0 (got ${replicas})`);
  }
  if (typeof options.nodeId !== "string" || options.nodeId === "") {
    problems.push("nodeId is empty: set NODE_ID or let the server generate one");
  } else if (options.nodeId.includes("|")) {
    // Connection ids start with the node id and are `|`-separated fields of events (codec.ts).
    problems.push(
      `nodeId ${JSON.stringify(options.nodeId)} contains "|", which events cannot carry`,
    );
  }
  if (typeof options.keyPrefix !== "string") problems.push("keyPrefix must be a string");
  const { limit, windowMs } = options.rateLimit;
  if (!Number.isSafeInteger(limit) || limit < 1) {
    problems.push(`rateLimit.limit must be a positive integer (got ${limit})`);
  }
  if (!Number.isSafeInteger(windowMs) || windowMs < 1) {
    problems.push(`rateLimit.windowMs must be a positive integer (got ${windowMs})`);
  }
  const heartbeat = options.heartbeatIntervalMs ?? DEFAULT_HEARTBEAT_INTERVAL_MS;
  const ttl = options.nodeTtlMs ?? DEFAULT_NODE_TTL_MS;
  if (!Number.isSafeInteger(heartbeat) || heartbeat < 10) {
    problems.push(`heartbeatIntervalMs must be an integer ≥ 10 (got ${heartbeat})`);
  }
  if (!Number.isSafeInteger(ttl) || ttl <= heartbeat) {
    problems.push(
      `nodeTtlMs (${ttl}) must be an integer above heartbeatIntervalMs (${heartbeat}); ` +
        "about 3 × the interval lets a live node miss a beat without being declared dead",
    );
  }
  if (options.retention !== undefined) {
    const { messageTtlMs, maxEntries } = options.retention;
    if (!Number.isSafeInteger(messageTtlMs) || messageTtlMs < 1) {
      problems.push(`retention.messageTtlMs must be a positive integer (got ${messageTtlMs})`);
    }
    if (!Number.isSafeInteger(maxEntries) || maxEntries < 1) {
      problems.push(`retention.maxEntries must be a positive integer (got ${maxEntries})`);
    }
  }
  if (options.quotas !== undefined) {
    for (const [name, value] of Object.entries(options.quotas)) {
      if (!Number.isSafeInteger(value) || value < 1) {
        problems.push(`quotas.${name} must be a positive integer (got ${value})`);
      }
    }
  }
  if (problems.length > 0) {
    throw new TypeError(`invalid Redis engine options: ${problems.join("; ")}`);
  }
}

/** The URL without its password, for messages. */
function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password !== "") parsed.password = "***";
    return parsed.toString();
  } catch {
    return "(unparseable REDIS_URL)";
  }
}
