import type { Engine } from "@mrezhen/engine";
import { type Logger as PinoLogger, pino } from "pino";
import { TokenVerifier } from "./auth/token.js";
import { ChatService } from "./chat/service.js";
import { type Config, DEV_JWT_SECRET } from "./config.js";
import { createEngine } from "./engine.js";
import { type App, buildApp } from "./http/app.js";
import { Connections } from "./http/connections.js";
import { NodeMetrics } from "./http/metrics.js";
import { WebhookEmitter } from "./webhooks/emitter.js";
import { WebhookWorker } from "./webhooks/worker.js";

export interface NodeOptions {
  readonly config: Config;
  /** Defaults to a pino logger at the config's level. */
  readonly logger?: PinoLogger;
  /** Defaults to the engine the config selects. Given engines are closed by close() too. */
  readonly engine?: Engine;
}

/** A running Mrezhen node. */
export interface MrezhenNode {
  readonly app: App;
  readonly chat: ChatService;
  readonly engine: Engine;
  readonly config: Config;
  /** Listens on the config's host and port; resolves to the HTTP base URL. */
  listen(): Promise<string>;
  /**
   * Drains and stops, within the config's SHUTDOWN_TIMEOUT_MS: not ready at once, no new
   * upgrades, in-flight frames answered, clients closed with 1012, then the engine closed.
   * Idempotent: every call returns the same promise.
   */
  close(): Promise<void>;
}

/** Composes a node: config → engine → chat core → HTTP. */
export async function createNode(options: NodeOptions): Promise<MrezhenNode> {
  const { config } = options;
  const log =
    options.logger ??
    pino({
      level: config.logLevel,
      base: { nodeId: config.nodeId },
      redact: ["req.headers.authorization"],
    });
  const verifier = await TokenVerifier.create(config.jwt, log);
  log.info(verifier.describeKeys(), "token keys");
  if (config.jwt.secret === DEV_JWT_SECRET) {
    // Refused with NODE_ENV=production (config.ts); anywhere else it is allowed, for `pnpm start`
    // out of the box, but a node reachable by others must not run with it unnoticed.
    log.warn(
      { jwtSecret: "development default" },
      "JWT_SECRET is not set: this node uses the development secret printed in the README, so anyone who has read it can forge a token for any user. Set JWT_SECRET to a random secret of at least 32 characters (for example `openssl rand -base64 48`) before anyone else can reach this node.",
    );
  }
  const engine = options.engine ?? (await createEngine(config, log));
  const metrics = new NodeMetrics(config.nodeId, engine);
  // Webhooks off: the core gets no events sink, and does nothing extra per message.
  const webhooks =
    config.webhooks === undefined
      ? undefined
      : {
          emitter: new WebhookEmitter(engine.events, log),
          worker: new WebhookWorker(
            engine.events,
            config.webhooks,
            log.child({ component: "webhooks" }),
          ),
        };
  webhooks?.worker.registerMetrics(metrics);
  const chat = new ChatService({
    engine,
    log,
    rateLimit: config.rateLimit,
    quotas: config.quotas,
    readRateLimit: config.readRateLimit,
    metrics,
    presenceCoalesceMs: config.presenceCoalesceMs,
    tokens: verifier,
    tokenExpiringNoticeMs: config.tokenExpiringNoticeMs,
    tokenSweepIntervalMs: config.tokenSweepIntervalMs,
    ...(webhooks === undefined ? {} : { events: webhooks.emitter }),
  });
  metrics.countConnectionsWith(() => chat.hub.connections);
  const connections = new Connections(
    chat,
    config.nodeId,
    log,
    metrics,
    config.heartbeatIntervalMs,
    config.limits,
  );
  let draining = false;
  const app = await buildApp({
    chat,
    engine,
    connections,
    verifier,
    metrics,
    log,
    limits: config.limits,
    isDraining: () => draining,
    upgradeTimeoutMs: config.upgradeTimeoutMs,
    upgradeShedLagMs: config.upgradeShedLagMs,
    upgradeTurnBudgetMs: config.upgradeTurnBudgetMs,
    allowedOrigins: config.allowedOrigins,
    apiKeys: config.api?.keys,
  });
  webhooks?.worker.start();
  const tokenSweep = setInterval(() => chat.expireTokens(), config.tokenSweepIntervalMs);
  tokenSweep.unref();

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      draining = true;
      clearInterval(tokenSweep);
      verifier.close();
      const deadline = Date.now() + config.shutdownTimeoutMs;
      log.info({ connections: connections.size }, "draining");
      await connections.drain(deadline);
      connections.flushWarnings();
      chat.flushWarnings();
      await app.close();
      // Events in hand stay pending in the queue: another node's worker takes them over.
      await webhooks?.worker.stop();
      chat.hub.close();
      await engine.close();
      log.info("stopped");
    })();
    return closing;
  };

  return {
    app,
    chat,
    engine,
    config,
    listen: async () => {
      const address = await app.listen({
        host: config.host,
        port: config.port,
        backlog: config.listenBacklog,
      });
      log.info({ address, engine: engine.kind }, "listening");
      return address;
    },
    close,
  };
}
