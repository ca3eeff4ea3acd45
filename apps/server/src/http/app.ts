import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer, type ServerResponse } from "node:http";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import websocket from "@fastify/websocket";
import type { Engine } from "@mrezhen/engine";
import { Limits } from "@mrezhen/protocol";
import Fastify, { type FastifyReply, type FastifyRequest, LogController } from "fastify";
import type { Logger as PinoLogger } from "pino";
import type WebSocket from "ws";
import { AuthError, extractToken, type Principal, type TokenVerifier } from "../auth/token.js";
import type { ChatService } from "../chat/service.js";
import type { PresenceMode } from "../chat/session.js";
import { apiPlugin } from "./api.js";
import type { ConnectionLimits, ConnectionOptions, Connections } from "./connections.js";
import type { NodeMetrics, RefusalReason } from "./metrics.js";
import { OriginPolicy } from "./origins.js";
import { UpgradePacer } from "./upgrade-pacing.js";
import { UpgradeShedding } from "./upgrade-shedding.js";

declare module "fastify" {
  interface FastifyRequest {
    /** Set by the upgrade's authentication hook; present in every WebSocket handler. */
    principal?: Principal;
    /** The options the client chose in its connection URL (`since`, `presence`). */
    connectionOptions?: ConnectionOptions;
    /** The upgrade's HTTP response, to detach from the socket once it carries a WebSocket. */
    upgradeResponse?: ServerResponse | undefined;
  }
}

export interface AppOptions {
  readonly chat: ChatService;
  readonly engine: Engine;
  readonly connections: Connections;
  readonly verifier: TokenVerifier;
  readonly metrics: NodeMetrics;
  readonly log: PinoLogger;
  /** The connection caps, for the refusals' text. */
  readonly limits: ConnectionLimits;
  /** True once the node started draining: refuse upgrades, report not ready. */
  readonly isDraining: () => boolean;
  /** UPGRADE_TIMEOUT_MS: how long a connection may take to send a whole request. */
  readonly upgradeTimeoutMs: number;
  /** UPGRADE_SHED_LAG_MS: refuse upgrades while the event loop is this late (0: never). */
  readonly upgradeShedLagMs?: number;
  /** UPGRADE_TURN_BUDGET_MS: upgrade work per event-loop turn before the rest waits (0: unpaced). */
  readonly upgradeTurnBudgetMs?: number;
  /** ALLOWED_ORIGINS; undefined allows any origin. */
  readonly allowedOrigins?: readonly string[] | undefined;
  /** API_KEY's keys: the server API is served under /api/v1 when set (see api.ts). */
  readonly apiKeys?: readonly string[] | undefined;
}

/** Header limits well under Node's defaults: a WebSocket upgrade needs few, short headers. */
const MAX_HEADER_BYTES = 16 * 1024;
const MAX_HEADERS = 64;
/** How often Node looks for connections past the upgrade timeout, at most (see buildApp). */
const MAX_TIMEOUT_CHECK_MS = 1000;
/** Fragments per message: browsers send one; a flood of tiny fragments is an attack. */
const MAX_FRAGMENTS = 32;

/** Retry-After (seconds) of a 503 for a node at MAX_CONNECTIONS. */
const NODE_FULL_RETRY_AFTER_S = 5;
/** Retry-After (seconds) of a 503 for a node shedding upgrades: its lateness passes in moments. */
const OVERLOADED_RETRY_AFTER_S = 1;
/**
 * Upgrades that may wait for a later turn of the event loop (UpgradePacer); past it, 503. A node
 * works through about a thousand a second: the last of 10,000 waits about 10 s, the default
 * UPGRADE_TIMEOUT_MS.
 */
const MAX_WAITING_UPGRADES = 10_000;

const demoPage = loadDemoPage();
const demoPageHeaders = pageSecurityHeaders(demoPage);
const sdkBundle = loadSdkBundle();

/**
 * The HTTP face of a node: the WebSocket endpoint (`/ws`, and `/` for older clients), which
 * authenticates during the upgrade, the probes, and the demo page.
 */
export async function buildApp(options: AppOptions) {
  const {
    chat,
    engine,
    connections,
    verifier,
    metrics,
    log,
    limits,
    isDraining,
    upgradeTimeoutMs,
    apiKeys,
  } = options;
  const origins =
    options.allowedOrigins === undefined ? undefined : new OriginPolicy(options.allowedOrigins);
  const shedding = new UpgradeShedding(options.upgradeShedLagMs ?? 0);
  const pacer = new UpgradePacer(options.upgradeTurnBudgetMs ?? 0, MAX_WAITING_UPGRADES);
  const app = Fastify({
    loggerInstance: log,
    // Per-request logs would double every upgrade and probe; connections are logged by the core.
    logController: new LogController({ disableRequestLogging: true }),
    // No child logger (with a request id) per request: upgrades are the hot case here, their
    // rare log lines need no request id, and each child would cost an allocation per connect.
    childLoggerFactory: (logger) => logger,
    // Behind nginx the client address comes from X-Forwarded-For; it is used for logs only.
    trustProxy: true,
    // A path parameter of the server API may be a user id: 128 characters, each up to 12 once
    // percent-encoded (4 UTF-8 bytes). Fastify's default (100) answered 414 to valid ids.
    routerOptions: { maxParamLength: 1600 },
    // Every TCP connection must send a whole request (for a WebSocket, its upgrade request)
    // within upgradeTimeoutMs of connecting, or of starting its next request on a kept-alive
    // connection; otherwise it gets a 408 and is closed, so silent or trickling sockets cannot
    // hold file descriptors. Node's own deadlines do it: headersTimeout counts from the moment
    // the connection opens, even before its first byte (a silent socket included), and
    // requestTimeout bounds a request with a body, which no route here takes. Both are checked
    // every connectionsCheckingInterval (30 s by default, so a silent socket lived 10 to 40 s);
    // a tenth of the timeout, at most a second, closes it within 10% of it. A connection leaves
    // Node's list once upgraded, so no deadline applies to WebSockets: idle ones stay open (the
    // heartbeat looks after those). Fastify's connectionTimeout (server.timeout) would be an
    // idle timer instead, which a socket trickling a byte at a time resets forever; and Fastify
    // ignores it, and requestTimeout, when given a serverFactory.
    serverFactory: (handler) => {
      const server = createServer(
        {
          maxHeaderSize: MAX_HEADER_BYTES,
          headersTimeout: upgradeTimeoutMs,
          requestTimeout: upgradeTimeoutMs,
          connectionsCheckingInterval: Math.min(
            MAX_TIMEOUT_CHECK_MS,
            Math.ceil(upgradeTimeoutMs / 10),
          ),
        },
        handler,
      );
      server.maxHeadersCount = MAX_HEADERS;
      return server;
    },
  });

  // `maxFragments` (ws ≥ 8.19) is newer than @types/ws, hence a variable rather than a literal.
  const socketOptions = {
    maxPayload: Limits.MAX_FRAME_BYTES,
    maxFragments: MAX_FRAGMENTS,
    perMessageDeflate: false,
    clientTracking: false,
    // Pings are answered by the connection itself, which coalesces a burst instead of
    // terminating the socket at ws's 61st unwritten pong (see MAX_PONGS_WAITING).
    autoPong: false,
  };
  await app.register(websocket, {
    options: socketOptions,
    // The socket's own errors (oversized frame, bad UTF-8) are the client's: ws has already
    // closed it with the right code; destroying it here would lose that close frame.
    errorHandler: (error, _socket, request) => request.log.debug({ err: error }, "websocket error"),
  });

  /**
   * Answers an upgrade with a plain-text refusal and closes the connection (no WebSocket is
   * made), counting it by reason; `retryAfterS` when waiting helps.
   */
  const refuse = (
    reply: FastifyReply,
    reason: RefusalReason,
    status: number,
    text: string,
    retryAfterS?: number,
  ) => {
    metrics.refusedUpgrade(reason);
    reply.code(status).header("connection", "close");
    if (retryAfterS !== undefined) reply.header("retry-after", String(retryAfterS));
    return reply.type("text/plain").send(text);
  };

  /**
   * Authenticates an upgrade before the handshake: a bad token gets a plain 401 and no socket.
   * Then takes a connection slot: a user over MAX_CONNECTIONS_PER_USER gets 429, a node at
   * MAX_CONNECTIONS 503; both before any WebSocket exists, so a refusal costs no socket state.
   */
  const authenticate = async (request: FastifyRequest, reply: FastifyReply) => {
    if (!request.ws) return;
    if (isDraining()) {
      return refuse(reply, "draining", 503, "Draining: connect again.");
    }
    // First, before the token's check: a refusal must cost a busy node as little as possible.
    const busy = "Service Unavailable: this node is busy; retry in a moment.";
    if (shedding.overloaded)
      return refuse(reply, "overloaded", 503, busy, OVERLOADED_RETRY_AFTER_S);
    const turn = pacer.admit();
    if (turn === "full") return refuse(reply, "overloaded", 503, busy, OVERLOADED_RETRY_AFTER_S);
    if (turn !== "now") {
      await turn;
      // A later turn: the node may be closing, or the socket known to be gone (an error while
      // it waited: no slot is taken for it). A client that left quietly is not known yet (the
      // upgrade's socket is not read meanwhile): the 101's write finds out, as without pacing.
      if (request.raw.socket.destroyed) return;
      if (isDraining()) return refuse(reply, "draining", 503, "Draining: connect again.");
    }
    const options = readConnectionOptions(request.query);
    if (typeof options === "string") {
      return refuse(reply, "bad_request", 400, `Bad Request: ${options}`);
    }
    // Before the token: a page from a foreign origin learns nothing about the token it sent.
    if (origins !== undefined && !origins.allows(request.headers.origin, request.headers.host)) {
      request.log.debug({ origin: request.headers.origin }, "upgrade refused: origin");
      return refuse(reply, "forbidden_origin", 403, "Forbidden: origin not allowed.");
    }
    request.connectionOptions = options;
    request.upgradeResponse = reply.raw;
    try {
      request.principal = await verifier.verify(
        extractToken(request.query, request.headers.authorization),
      );
    } catch (error) {
      if (!(error instanceof AuthError)) throw error;
      request.log.debug({ reason: error.reason }, "upgrade refused");
      return refuse(reply, "unauthorized", 401, `Unauthorized: ${error.reason}.`);
    }
    // A revocation of the server API: a map lookup in this node's copy, no round trip.
    const revokedBefore = engine.revocations.revokedBefore(request.principal.userId);
    if (
      revokedBefore !== undefined &&
      (request.principal.issuedAt === undefined || request.principal.issuedAt < revokedBefore)
    ) {
      return refuse(reply, "unauthorized", 401, "Unauthorized: token revoked.");
    }
    const admission = connections.admit(request.principal.userId, request.raw.socket);
    if (admission === "user_limit") {
      // No Retry-After: waiting does not help, only closing another connection of this user.
      return refuse(
        reply,
        "user_limit",
        429,
        `Too Many Requests: at most ${limits.connectionsPerUser} connections per user.`,
      );
    }
    if (admission === "node_limit") {
      // Behind a load balancer the retry may reach another node; this one frees slots as
      // clients leave.
      const text = "Service Unavailable: this node has too many connections; retry later.";
      return refuse(reply, "node_limit", 503, text, NODE_FULL_RETRY_AFTER_S);
    }
  };

  const onSocket = (socket: WebSocket, request: FastifyRequest) => {
    // @fastify/websocket attaches the upgrade's HTTP response to the TCP socket and leaves it
    // there: detached, the request, reply and their headers (the token among them) are freed
    // instead of living as long as the WebSocket (about 2 KiB per idle connection).
    request.upgradeResponse?.detachSocket(request.raw.socket);
    request.upgradeResponse = undefined;
    if (request.principal === undefined) {
      socket.close(1011, "unauthenticated");
      return;
    }
    // request.raw.socket is the TCP socket the WebSocket now runs on (for write batching).
    connections.accept(
      socket,
      request.raw.socket,
      request.principal,
      request.connectionOptions ?? DEFAULT_OPTIONS,
      // Read only for a debug log: the address costs a getpeername and X-Forwarded-For parsing.
      () => request.ip,
    );
  };

  app.route({
    method: "GET",
    url: "/ws",
    preValidation: authenticate,
    handler: (_request, reply) =>
      reply
        .code(426)
        .header("upgrade", "websocket")
        .send({ error: "Connect with a WebSocket client." }),
    wsHandler: onSocket,
  });
  const sendDemoPage = (_request: FastifyRequest, reply: FastifyReply) =>
    reply.headers(demoPageHeaders).type("text/html; charset=utf-8").send(demoPage);
  app.route({
    method: "GET",
    url: "/",
    preValidation: authenticate,
    handler: sendDemoPage,
    wsHandler: onSocket,
  });
  app.get("/demo", sendDemoPage);
  // The client SDK, one ES module, which the demo page imports: the page runs on the same code
  // an app would. Revalidated on every load (no-cache), so a restarted node's page is current.
  app.get("/sdk/client.js", (_request, reply) =>
    sdkBundle === undefined
      ? reply.code(404).send({ error: "Not Found", message: "The SDK bundle is not built." })
      : reply
          .headers({ "cache-control": "no-cache", "x-content-type-options": "nosniff" })
          .type("text/javascript; charset=utf-8")
          .send(sdkBundle),
  );

  // Fastify's own 404 says "Route GET:/x?token=… not found": it would echo a token given in the
  // URL of a mistyped path back to whoever sees the response (and into proxies' logs of bodies).
  app.setNotFoundHandler((_request, reply) =>
    reply.code(404).send({ error: "Not Found", message: "No such route." }),
  );

  app.get("/health", async () => ({
    status: "ok",
    uptime: process.uptime(),
    connections: chat.hub.connections,
  }));

  app.get("/ready", async (_request, reply) => {
    if (isDraining())
      return reply.code(503).send({ status: "draining", reason: "the node is shutting down" });
    const health = engine.health();
    if (!health.ok)
      return reply
        .code(503)
        .send({ status: "unavailable", reason: health.reason ?? "engine unavailable" });
    const jwks = verifier.jwksStatus;
    if (jwks !== undefined && !jwks.fetched) {
      const reason = `jwks: the identity provider's keys have not been fetched yet${jwks.lastError === undefined ? "" : ` (${jwks.lastError})`}`;
      // With other keys (JWT_SECRET, JWT_PUBLIC_KEY) the node serves their tokens: ready, but
      // say what is missing. With the JWKS alone it can authenticate nobody: not ready, so a
      // balancer sends new connections to a node that can (a node cut off from the provider
      // while the others reach it). See the README's "Connecting".
      if (verifier.jwksOnly) return reply.code(503).send({ status: "unavailable", reason });
      return { status: "degraded", reason };
    }
    return { status: "ready" };
  });

  app.get("/metrics", async (_request, reply) =>
    reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()),
  );

  app.addHook("onClose", async () => {
    shedding.stop();
    pacer.stop();
  });

  if (apiKeys !== undefined && apiKeys.length > 0)
    await app.register(apiPlugin, { chat, engine, keys: apiKeys, log });

  return app;
}

const DEFAULT_OPTIONS: ConnectionOptions = { since: undefined, presence: "all" };

/** `presence=` values and the mode each selects (see PresenceMode). */
const PRESENCE_MODES: Readonly<Record<string, PresenceMode>> = {
  on: "all",
  contacts: "contacts",
  off: "off",
};

/**
 * The connection URL's options: `since` (a whole number ≥ 0: acknowledged delivery) and
 * `presence` (`on`, the default, `contacts` or `off`). Returns what is wrong with them, if
 * anything.
 */
function readConnectionOptions(query: unknown): ConnectionOptions | string {
  const params =
    typeof query === "object" && query !== null ? (query as Record<string, unknown>) : {};
  const { since: rawSince, presence: rawPresence } = params;
  if (rawSince !== undefined && (typeof rawSince !== "string" || !/^\d{1,15}$/.test(rawSince))) {
    return "since must be a whole number of at least 0.";
  }
  const presence =
    rawPresence === undefined
      ? "all"
      : typeof rawPresence === "string" && Object.hasOwn(PRESENCE_MODES, rawPresence)
        ? PRESENCE_MODES[rawPresence]
        : undefined;
  if (presence === undefined) return "presence must be on, contacts or off.";
  return { since: rawSince === undefined ? undefined : Number(rawSince), presence };
}

/**
 * The headers of the demo page. Its Content-Security-Policy lets it run only its own inline
 * script and style, named by hash (so an injected script or style runs nowhere), scripts from
 * this origin (the SDK at /sdk/client.js, which the inline module imports), and open
 * WebSockets to any host: the page's "Server URL" field may name another node. It may be framed
 * by nobody (clickjacking), by the CSP for current browsers and X-Frame-Options for old ones.
 * The page carries the same policy, looser (inline allowed), in a meta tag for when it is opened
 * from disk; a browser applies both, so the stricter header wins.
 */
function pageSecurityHeaders(html: string): Record<string, string> {
  const scripts = inlineHashes(html, "script");
  const styles = inlineHashes(html, "style");
  const csp = [
    "default-src 'none'",
    `script-src 'self' ${scripts}`.trimEnd(),
    `style-src ${styles || "'none'"}`,
    "img-src data:",
    "connect-src 'self' ws: wss:",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join("; ");
  return {
    "content-security-policy": csp,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
  };
}

/** CSP sources ('sha256-…') for the contents of every inline `<tag>` element of `html`. */
function inlineHashes(html: string, tag: "script" | "style"): string {
  const sources: string[] = [];
  for (const match of html.matchAll(
    new RegExp(`<${tag}(?:\\s[^>]*)?>([\\s\\S]*?)</${tag}>`, "g"),
  )) {
    // A browser hashes the element's text after the HTML parser turned CRLF into LF: a checkout
    // with Windows line endings must get the same hash.
    const text = (match[1] ?? "").replace(/\r\n?/g, "\n");
    sources.push(`'sha256-${createHash("sha256").update(text, "utf8").digest("base64")}'`);
  }
  return sources.join(" ");
}

function loadDemoPage(): string {
  try {
    // Two levels up from src/http (tests) and from dist/http (production): apps/server/public.
    return readFileSync(new URL("../../public/demo.html", import.meta.url), "utf8");
  } catch {
    return "<!doctype html><title>Mrezhen</title><p>Mrezhen is running. The demo page is not installed.</p>";
  }
}
/**
 * The SDK bundle (packages/client/dist/mrezhen-client.js, made by `pnpm build`), found through the
 * @mrezhen/client package so that it resolves from a checkout and from a deployed copy alike.
 */
function loadSdkBundle(): string | undefined {
  try {
    const manifest = createRequire(import.meta.url).resolve("@mrezhen/client/package.json");
    return readFileSync(new URL("dist/mrezhen-client.js", pathToFileURL(manifest)), "utf8");
  } catch {
    return undefined;
  }
}

export type App = Awaited<ReturnType<typeof buildApp>>;
