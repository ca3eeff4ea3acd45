import { createHash, timingSafeEqual } from "node:crypto";
import swagger from "@fastify/swagger";
import { type Engine, EngineUnavailableError } from "@mrezhen/engine";
import { ErrorCode, type ErrorDetails, Limits, userIdProblem } from "@mrezhen/protocol";
import { Ajv } from "ajv";
import type { FastifyError, FastifyPluginAsync, FastifyReply } from "fastify";
import type { Logger } from "../chat/ports.js";
import type { ChatService } from "../chat/service.js";

/**
 * The server API, for the service's own backend: `/api/v1`, with a bearer key (API_KEY). It sends
 * as a user, asks who is online, closes or revokes a user's connections and reads history. Every
 * route is a Fastify route with JSON Schemas, validated by Fastify and turned into the OpenAPI
 * document at `/api/v1/openapi.json` by @fastify/swagger, so the document and the validation
 * cannot drift. Errors are `{ code, message }` with the WebSocket protocol's codes.
 */
export interface ApiOptions {
  readonly chat: ChatService;
  readonly engine: Engine;
  /** API_KEY's keys: any one of them is accepted (rotation: add the new one, then drop the old). */
  readonly keys: readonly string[];
  readonly log: Logger;
}

export const API_PREFIX = "/api/v1";

/** A close reason is at most 123 bytes of UTF-8 (RFC 6455: a control frame's 125, less the code). */
const MAX_CLOSE_REASON_BYTES = 123;

/** HTTP status of each error code the API answers with. */
const STATUS: Partial<Record<ErrorCode, number>> = {
  [ErrorCode.UNAUTHORIZED]: 401,
  [ErrorCode.NOT_FOUND]: 404,
  [ErrorCode.RATE_LIMITED]: 429,
  [ErrorCode.INTERNAL_ERROR]: 500,
  [ErrorCode.UNAVAILABLE]: 503,
};

const errorSchema = {
  type: "object",
  description:
    "An error: `code` for programs (the WebSocket protocol's codes), `message` for people.",
  required: ["code", "message"],
  properties: {
    code: { type: "string", enum: Object.values(ErrorCode) },
    message: { type: "string" },
    limit: { type: "string", description: "RATE_LIMITED: which limit." },
    retryAfterMs: { type: "integer", description: "RATE_LIMITED: when to retry." },
    outcome: {
      type: "string",
      enum: ["not_stored", "unknown"],
      description:
        "A failed send: whether it may have been stored (retry with the same clientMsgId).",
    },
    clientMsgId: { type: "string" },
  },
} as const;

const errors = {
  400: { ...errorSchema, description: "Invalid input; `message` names the field." },
  401: { ...errorSchema, description: "No API key, or not one of API_KEY's." },
  500: { ...errorSchema, description: "The node failed." },
  503: { ...errorSchema, description: "The engine (Redis) cannot serve right now." },
} as const;

const userIdSchema = {
  type: "string",
  description:
    "A user id: 1 to 128 characters (code points), well-formed Unicode, no control character, not only whitespace.",
} as const;

const presenceSchema = {
  type: "object",
  required: ["userId", "online", "connections"],
  properties: {
    userId: { type: "string" },
    online: { type: "boolean" },
    connections: { type: "integer", description: "Open connections on all nodes." },
  },
} as const;

const userParams = {
  type: "object",
  required: ["id"],
  properties: { id: userIdSchema },
} as const;

const security = [{ apiKey: [] }];

/**
 * Registers the API under {@link API_PREFIX}. Called only when API_KEY is set: without it no
 * route exists, and every `/api/v1` path answers the node's plain 404.
 */
export const apiPlugin: FastifyPluginAsync<ApiOptions> = async (app, options) => {
  const { chat, engine, log } = options;
  // Keys are compared as SHA-256 digests, all of them, every time: the time taken says nothing
  // of how much of a key matched, nor which key did.
  const keyDigests = options.keys.map(digest);
  const authorized = (header: string | undefined): boolean => {
    const match = header === undefined ? null : /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header);
    const given = digest(match?.[1] ?? "");
    let ok = false;
    for (const key of keyDigests) ok = timingSafeEqual(given, key) || ok;
    return ok && match !== null;
  };

  await app.register(swagger, {
    openapi: {
      openapi: "3.1.0",
      info: {
        title: "Mrezhen server API",
        version: "1.0.0",
        description:
          "For the service's backend: send as a user, presence, disconnect and revoke users, read history. Authenticate with `Authorization: Bearer <API_KEY>`.",
      },
      components: {
        securitySchemes: { apiKey: { type: "http", scheme: "bearer" } },
      },
    },
    // Only the API is described: the WebSocket endpoint has its AsyncAPI document.
    hideUntagged: true,
  });

  await app.register(
    async (api) => {
      // Bodies are validated without type coercion (a number is not a user id), queries and
      // paths with it (they are strings on the wire: `limit=20` is a number).
      const strict = new Ajv({ coerceTypes: false, useDefaults: true, strict: false });
      const coercing = new Ajv({ coerceTypes: "array", useDefaults: true, strict: false });
      api.setValidatorCompiler(({ schema, httpPart }) =>
        (httpPart === "body" ? strict : coercing).compile(schema),
      );

      api.addHook("onRequest", async (request, reply) => {
        if (request.routeOptions.url === `${API_PREFIX}/openapi.json`) return;
        if (!authorized(request.headers.authorization)) {
          return reply
            .code(401)
            .header("www-authenticate", 'Bearer realm="mrezhen"')
            .send({ code: ErrorCode.UNAUTHORIZED, message: "A valid API key is required." });
        }
      });

      api.setErrorHandler((error: FastifyError, request, reply) => {
        if (error.validation !== undefined) {
          return reply.code(400).send({
            code: validationCode(error),
            message: error.message,
          });
        }
        if (error instanceof EngineUnavailableError) {
          return reply.code(503).send({
            code: ErrorCode.UNAVAILABLE,
            message: "The service cannot serve this right now; retry later.",
          });
        }
        const status = error.statusCode ?? 500;
        if (status < 500) {
          const code =
            error.code === "FST_ERR_CTP_INVALID_JSON_BODY" ||
            error.code === "FST_ERR_CTP_EMPTY_JSON_BODY" ||
            error instanceof SyntaxError
              ? ErrorCode.INVALID_JSON
              : ErrorCode.INVALID_FORMAT;
          return reply.code(status).send({ code, message: error.message });
        }
        request.log.error({ err: error }, "API request failed");
        return reply
          .code(500)
          .send({ code: ErrorCode.INTERNAL_ERROR, message: "The request failed on the server." });
      });

      api.setNotFoundHandler((_request, reply) =>
        reply.code(404).send({ code: ErrorCode.NOT_FOUND, message: "No such API route." }),
      );

      api.get("/openapi.json", { schema: { hide: true } }, async (_request, reply) =>
        reply.type("application/json").send(app.swagger()),
      );

      api.post<{
        Body: {
          from: string;
          to: string;
          content: string;
          clientMsgId?: string;
          applyLimits?: boolean;
        };
      }>(
        "/messages",
        {
          bodyLimit: Limits.MAX_FRAME_BYTES,
          schema: {
            tags: ["messages"],
            summary: "Send a message as a user",
            description:
              "Stored before the answer, delivered live or queued, copied to the sender's connections, idempotent on clientMsgId: exactly a WebSocket `direct_message` of `from`. The same validation and error codes (MISSING_RECIPIENT, EMPTY_CONTENT, CONTENT_TOO_LONG, SELF_MESSAGE, INVALID_FORMAT). Not counted against the sender's rate limit and quotas unless `applyLimits` is true.",
            security,
            body: {
              type: "object",
              required: ["from", "to", "content"],
              properties: {
                from: userIdSchema,
                to: userIdSchema,
                content: {
                  type: "string",
                  description: "1 to 5000 characters (code points), not only whitespace.",
                },
                clientMsgId: {
                  type: "string",
                  description: "Idempotency key, 1 to 64 characters: a retry gets the same answer.",
                },
                applyLimits: {
                  type: "boolean",
                  default: false,
                  description:
                    "Count against the sender's rate limit and daily quotas (429 RATE_LIMITED).",
                },
              },
            },
            response: {
              200: {
                description: "Stored: the fields of the WebSocket `message_ack`.",
                type: "object",
                required: ["messageId", "to", "timestamp", "status", "seq", "position"],
                properties: {
                  messageId: { type: "string" },
                  to: { type: "string" },
                  timestamp: { type: "string" },
                  status: { type: "string", enum: ["delivered", "queued"] },
                  seq: { type: "integer" },
                  position: { type: "integer", description: "The sender's inbox position." },
                  clientMsgId: { type: "string" },
                  duplicate: {
                    type: "boolean",
                    description: "A retry of a clientMsgId already stored: nothing new was stored.",
                  },
                },
              },
              429: { ...errorSchema, description: "RATE_LIMITED (with applyLimits)." },
              ...errors,
            },
          },
        },
        async (request, reply) => {
          const { from, to, content, clientMsgId, applyLimits } = request.body;
          try {
            const result = await chat.sendAs({ from, to, content, clientMsgId, applyLimits });
            if (result.ok) return result.ack;
            const status = STATUS[result.error.code] ?? 400;
            if (result.details?.retryAfterMs !== undefined)
              reply.header("retry-after", String(Math.ceil(result.details.retryAfterMs / 1000)));
            return reply.code(status).send({ ...result.error, ...result.details });
          } catch (error) {
            // As a WebSocket send: say what is known of the message's fate, never claim success.
            const details: ErrorDetails = {
              outcome:
                error instanceof EngineUnavailableError && error.mayHaveSucceeded
                  ? "unknown"
                  : "not_stored",
              ...(clientMsgId === undefined ? {} : { clientMsgId }),
            };
            if (error instanceof EngineUnavailableError) {
              log.warn({ err: error }, "engine unavailable (API send)");
              return reply.code(503).send({
                code: ErrorCode.UNAVAILABLE,
                message:
                  details.outcome === "unknown"
                    ? "The service lost track of this message: it may have been stored. Send it again with the same clientMsgId."
                    : "The service cannot store messages right now; this one was not stored.",
                ...details,
              });
            }
            log.error({ err: error }, "API send failed");
            return reply.code(500).send({
              code: ErrorCode.INTERNAL_ERROR,
              message: "The request failed on the server; the message was not stored.",
              ...details,
            });
          }
        },
      );

      api.get<{ Querystring: { users: string } }>(
        "/presence",
        {
          schema: {
            tags: ["presence"],
            summary: "Who of these users is online",
            description:
              "`users`: 1 to 100 comma-separated user ids (ids with a comma: ask GET /users/{id}). Each once, in the order asked.",
            security,
            querystring: {
              type: "object",
              required: ["users"],
              properties: { users: { type: "string", minLength: 1 } },
            },
            response: {
              200: {
                type: "object",
                required: ["users"],
                properties: { users: { type: "array", items: presenceSchema } },
              },
              ...errors,
            },
          },
        },
        async (request, reply) => {
          const users = [...new Set(request.query.users.split(","))];
          if (users.length > Limits.ONLINE_QUERY_MAX_USERS) {
            return invalid(
              reply,
              `querystring/users must hold at most ${Limits.ONLINE_QUERY_MAX_USERS} user ids.`,
            );
          }
          for (const user of users) {
            const problem = userIdProblem(user);
            if (problem !== undefined)
              return invalid(reply, `querystring/users holds an invalid user id: it ${problem}.`);
          }
          const counts = await engine.presence.connectionCounts(users);
          return {
            users: users.map((userId, i) => presenceOf(userId, counts[i] ?? 0)),
          };
        },
      );

      api.get<{ Params: { id: string } }>(
        "/users/:id",
        {
          schema: {
            tags: ["presence"],
            summary: "One user's presence",
            security,
            params: userParams,
            response: { 200: presenceSchema, ...errors },
          },
        },
        async (request, reply) => {
          const problem = userIdProblem(request.params.id);
          if (problem !== undefined) return invalid(reply, `params/id ${problem}.`);
          const [count] = await engine.presence.connectionCounts([request.params.id]);
          return presenceOf(request.params.id, count ?? 0);
        },
      );

      api.post<{ Params: { id: string }; Body: { code?: number; reason?: string } | undefined }>(
        "/users/:id/disconnect",
        {
          schema: {
            tags: ["users"],
            summary: "Close every connection of a user, on every node",
            description:
              'Each connection gets a WebSocket close with `code` (default 4003) and `reason` (default "disconnected by the service"), within a second. The user may connect again (to keep them out, revoke their tokens).',
            security,
            params: userParams,
            body: {
              type: ["object", "null"],
              properties: {
                code: { type: "integer", minimum: 4000, maximum: 4999, default: 4003 },
                reason: { type: "string", description: "At most 123 bytes of UTF-8." },
              },
            },
            response: {
              200: {
                type: "object",
                required: ["userId", "code", "reason"],
                properties: {
                  userId: { type: "string" },
                  code: { type: "integer" },
                  reason: { type: "string" },
                },
              },
              ...errors,
            },
          },
        },
        async (request, reply) => {
          const userId = request.params.id;
          const problem = userIdProblem(userId);
          if (problem !== undefined) return invalid(reply, `params/id ${problem}.`);
          const code = request.body?.code ?? 4003;
          const reason = request.body?.reason ?? "disconnected by the service";
          if (Buffer.byteLength(reason) > MAX_CLOSE_REASON_BYTES)
            return invalid(reply, `body/reason must be at most ${MAX_CLOSE_REASON_BYTES} bytes.`);
          await engine.broker.publishControl(userId, {
            kind: "control",
            action: "disconnect",
            code,
            reason,
          });
          log.info({ userId, code }, "API: disconnect");
          return { userId, code, reason };
        },
      );

      api.post<{ Params: { id: string }; Body: { before?: number | string } | undefined }>(
        "/users/:id/revoke",
        {
          schema: {
            tags: ["users"],
            summary: "Revoke a user's tokens issued before a time",
            description:
              'From now on, on every node, the user\'s tokens whose `iat` is before `before` (or that have no `iat`) are refused at the upgrade (401 "token revoked"), and their open connections get UNAUTHORIZED and close 4001. `before` defaults to now. `iat` has whole seconds: a token issued in the second of `before` counts as earlier unless `before` is a whole second.',
            security,
            params: userParams,
            body: {
              type: ["object", "null"],
              properties: {
                before: {
                  description: "ISO 8601 time, or milliseconds since the epoch. Default: now.",
                  anyOf: [
                    { type: "integer", minimum: 0 },
                    { type: "string", minLength: 1 },
                  ],
                },
              },
            },
            response: {
              200: {
                type: "object",
                required: ["userId", "before"],
                properties: {
                  userId: { type: "string" },
                  before: {
                    type: "string",
                    description: "The revocation now in force (ISO 8601).",
                  },
                },
              },
              ...errors,
            },
          },
        },
        async (request, reply) => {
          const userId = request.params.id;
          const problem = userIdProblem(userId);
          if (problem !== undefined) return invalid(reply, `params/id ${problem}.`);
          const raw = request.body?.before;
          const before =
            raw === undefined ? Date.now() : typeof raw === "number" ? raw : Date.parse(raw);
          if (!Number.isSafeInteger(before) || before < 0)
            return invalid(
              reply,
              "body/before must be an ISO 8601 time or milliseconds since the epoch.",
            );
          await engine.revocations.revoke(userId, before);
          const inForce = engine.revocations.revokedBefore(userId) ?? before;
          await engine.broker.publishControl(userId, {
            kind: "control",
            action: "revoke",
            before: inForce,
          });
          log.info({ userId, before: inForce }, "API: revoke");
          return { userId, before: new Date(inForce).toISOString() };
        },
      );

      api.get<{
        Params: { a: string; b: string };
        Querystring: { before?: number; limit: number };
      }>(
        "/conversations/:a/:b/messages",
        {
          schema: {
            tags: ["messages"],
            summary: "A page of a conversation's history (moderation)",
            description:
              "The newest `limit` messages with a seq below `before` (all when absent), oldest first; `hasMore` says whether older ones exist (ask again with `before` = the first one's seq).",
            security,
            params: {
              type: "object",
              required: ["a", "b"],
              properties: { a: userIdSchema, b: userIdSchema },
            },
            querystring: {
              type: "object",
              properties: {
                before: { type: "integer", minimum: 1 },
                limit: { type: "integer", minimum: 1, maximum: 100, default: 50 },
              },
            },
            response: {
              200: {
                type: "object",
                required: ["messages", "hasMore"],
                properties: {
                  messages: {
                    type: "array",
                    items: {
                      type: "object",
                      required: ["id", "from", "to", "content", "timestamp", "seq"],
                      properties: {
                        id: { type: "string" },
                        from: { type: "string" },
                        to: { type: "string" },
                        content: { type: "string" },
                        timestamp: { type: "string" },
                        seq: { type: "integer" },
                        clientMsgId: { type: "string" },
                      },
                    },
                  },
                  hasMore: { type: "boolean" },
                },
              },
              ...errors,
            },
          },
        },
        async (request, reply) => {
          const { a, b } = request.params;
          for (const [field, id] of [
            ["a", a],
            ["b", b],
          ] as const) {
            const problem = userIdProblem(id);
            if (problem !== undefined) return invalid(reply, `params/${field} ${problem}.`);
          }
          const page = await engine.messages.history(
            a,
            b,
            request.query.limit,
            request.query.before,
          );
          // The stored texts are the messages' JSON already: spliced in, not parsed and redone.
          return reply
            .type("application/json; charset=utf-8")
            .send(`{"messages":[${page.messages.join(",")}],"hasMore":${page.hasMore}}`);
        },
      );
    },
    { prefix: API_PREFIX },
  );
};

function digest(key: string): Buffer {
  return createHash("sha256").update(key).digest();
}

function presenceOf(userId: string, connections: number) {
  return { userId, online: connections > 0, connections };
}

function invalid(reply: FastifyReply, message: string) {
  return reply.code(400).send({ code: ErrorCode.INVALID_FORMAT, message });
}

/**
 * The WebSocket code of a schema violation: a missing `to` or `content` is what a frame without
 * them gets (MISSING_RECIPIENT, EMPTY_CONTENT); anything else is INVALID_FORMAT.
 */
function validationCode(error: FastifyError): ErrorCode {
  const first = error.validation?.[0];
  if (error.validationContext === "body" && first?.keyword === "required") {
    const missing = (first.params as { missingProperty?: string }).missingProperty;
    if (missing === "to") return ErrorCode.MISSING_RECIPIENT;
    if (missing === "content") return ErrorCode.EMPTY_CONTENT;
  }
  return ErrorCode.INVALID_FORMAT;
}
