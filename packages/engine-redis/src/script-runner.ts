/**
 * Running the Lua scripts, and what a failure means to the caller.
 *
 * A script costs one round trip: EVALSHA with the script's SHA1. The scripts are loaded with
 * SCRIPT LOAD at start; when Redis has forgotten them (restart, SCRIPT FLUSH, failover) EVALSHA
 * fails with NOSCRIPT, without running anything, and the runner sends the body with EVAL. That
 * fallback is safe for non-idempotent scripts (append) precisely because NOSCRIPT means "not run";
 * EVAL also caches the script again, so the next call is a plain EVALSHA.
 * (ioredis' `defineCommand` would do the same, but sends EVAL first on every new connection and
 * gives untyped methods; this is a few lines and keeps the hot path exactly one EVALSHA.)
 */
import { EngineUnavailableError } from "@mrezhen/engine";
import { Cluster, type Redis } from "ioredis";
import { clusterVariant } from "./cluster-scripts.js";
import type { LuaScript } from "./scripts.js";

export type ScriptArgument = string | number;

/** A standalone Redis connection, or a Redis Cluster client (REDIS_CLUSTER_NODES). */
export type RedisClient = Redis | Cluster;

/**
 * REDIS_WAIT_REPLICAS per client: scripts that write wait for that many replicas (WAIT) before
 * they resolve. Set once by the engine; a WeakMap keeps the runner's signature unchanged.
 */
const waitReplicasOf = new WeakMap<RedisClient, number>();
/** How long a write waits for its replicas before the call fails (the client then retries). */
const WAIT_TIMEOUT_MS = 2000;

export function setWaitReplicas(client: RedisClient, replicas: number): void {
  if (replicas > 0) waitReplicasOf.set(client, replicas);
}

/**
 * Runs `script` with `args` = its keys followed by its other arguments. Rejects with
 * toEngineError. On a Redis Cluster client the script's cluster variant runs (cluster-scripts.ts)
 * and ioredis routes it by its keys (following MOVED and ASK). With REDIS_WAIT_REPLICAS = N,
 * the steps of a direct message (`durable`: what the client's ack promises) are pipelined
 * with `WAIT N` on the same node:
 * still one round trip, answered once N replicas have the write. Fewer within WAIT_TIMEOUT_MS
 * is an EngineUnavailableError that may have succeeded: the caller does not ack, and the
 * client's retry (same clientMsgId) is answered by the idempotency record.
 */
export async function runScript(
  client: RedisClient,
  standalone: LuaScript,
  args: readonly ScriptArgument[],
  durable = false,
): Promise<unknown> {
  const script = client instanceof Cluster ? clusterVariant(standalone) : standalone;
  const replicas = durable ? waitReplicasOf.get(client) : undefined;
  if (replicas !== undefined) return runAndWait(client, script, args, replicas);
  coalesceWrites(client);
  try {
    return await client.evalsha(script.sha, script.numberOfKeys, ...args);
  } catch (error) {
    if (!isNoScript(error)) throw toEngineError(error);
  }
  try {
    return await client.eval(script.lua, script.numberOfKeys, ...args);
  } catch (error) {
    throw toEngineError(error);
  }
}

async function runAndWait(
  client: RedisClient,
  script: LuaScript,
  args: readonly ScriptArgument[],
  replicas: number,
): Promise<unknown> {
  let reply: unknown;
  for (const body of [undefined, script.lua]) {
    // One pipeline, so that WAIT goes to the node that ran the script (its keys' slot).
    const pipeline = client.pipeline();
    if (body === undefined) pipeline.evalsha(script.sha, script.numberOfKeys, ...args);
    else pipeline.eval(body, script.numberOfKeys, ...args);
    pipeline.call("WAIT", replicas, WAIT_TIMEOUT_MS);
    let results: [Error | null, unknown][] | null;
    try {
      results = await pipeline.exec();
    } catch (error) {
      throw toEngineError(error);
    }
    const [scriptResult, waitResult] = results ?? [];
    const scriptError = scriptResult?.[0];
    if (scriptError && body === undefined && isNoScript(scriptError)) continue;
    if (scriptError) throw toEngineError(scriptError);
    if (waitResult?.[0]) throw toEngineError(waitResult[0]);
    reply = scriptResult?.[1];
    const acknowledged = waitResult?.[1];
    if (typeof acknowledged !== "number" || acknowledged < replicas) {
      commandErrors.unavailable++;
      throw new EngineUnavailableError(
        `redis unavailable: ${String(acknowledged)} of ${replicas} replicas acknowledged a write within ${WAIT_TIMEOUT_MS} ms`,
        { mayHaveSucceeded: true },
      );
    }
    return reply;
  }
  return reply;
}

/**
 * Sends the commands issued in one pass of the event loop's I/O phase in one write. ioredis
 * writes each command to its socket at once, a syscall each (on loopback, the kernel's delivery
 * to Redis is part of it); under load one batch of replies resumes dozens of handlers, each
 * issuing its next script (an append after its rate-limit check), and a connect storm has many
 * upgrades ready in each pass, each issuing its reads. The socket is corked until the pass is
 * done (setImmediate runs right after it), then the commands leave together, in the order they
 * were issued: the same bytes, in one writev. An idle node's pass holds one event, so a lone
 * command waits for nothing. Measured in a connect storm on one node (3,000 connects, strace):
 * 4.0 writes per connect before (uncorked at the end of each callback's tick), 2.1 after,
 * one of them the upgrade's own 101 response. The broker does the same for SUBSCRIBE and
 * UNSUBSCRIBE: one write per subscription was once the node's largest cost in a connect storm
 * after the upgrade itself.
 */
export function coalesceWrites(client: RedisClient): void {
  if (client instanceof Cluster) {
    // One connection per master: each is corked the same way for the tick.
    if (corkedClusters.has(client)) return;
    corkedClusters.add(client);
    setImmediate(() => corkedClusters.delete(client));
    for (const node of client.nodes("master")) coalesceWrites(node);
    return;
  }
  const { stream } = client;
  if (stream === undefined || corked.has(stream)) return;
  corked.add(stream);
  stream.cork();
  setImmediate(uncork, stream);
}

const corked = new WeakSet<Redis["stream"]>();
const corkedClusters = new WeakSet<Cluster>();

function uncork(stream: Redis["stream"]): void {
  corked.delete(stream);
  stream.uncork();
}

/** Loads every script, so that the first call of each is already a hit. */
export async function loadScripts(
  client: RedisClient,
  scripts: readonly LuaScript[],
): Promise<void> {
  if (client instanceof Cluster) {
    // Every master: a script runs on the node of its keys. A master promoted later gets them
    // from the NOSCRIPT fallback.
    const bodies = scripts.map((script) => clusterVariant(script).lua);
    await Promise.all(
      client
        .nodes("master")
        .flatMap((node) => bodies.map((lua) => node.script("LOAD", lua) as Promise<unknown>)),
    );
    return;
  }
  await Promise.all(scripts.map((script) => client.script("LOAD", script.lua)));
}

function isNoScript(error: unknown): boolean {
  return error instanceof Error && error.message.startsWith("NOSCRIPT");
}

/**
 * Server replies that mean "cannot serve now, try again" rather than "this request is wrong":
 * loading a dataset, a script running too long, a replica or a failover in progress, out of memory.
 */
const RETRYABLE_REPLY = /^(LOADING|BUSY|MASTERDOWN|READONLY|TRYAGAIN|CLUSTERDOWN|OOM|NOREPLICAS)\b/;

/**
 * What ioredis says when it refuses a command without writing it: the connection is not ready
 * and the offline queue is disabled (see engine.ts).
 */
const NOT_WRITTEN = /enableOfflineQueue/;

/**
 * Failed commands, counted where every failure passes: here, in toEngineError. Per process, not
 * per engine (the function has no engine at hand); a process runs one node, except in tests.
 */
export const commandErrors = { unavailable: 0, reply: 0 };
const countedReplies = new WeakSet<Error>();

/**
 * Maps a failure to what the ports promise: EngineUnavailableError when Redis cannot serve right
 * now (connection down, closed while the command was in flight, socket timeout, or a retryable
 * server reply), the error itself otherwise (a script error is a bug, not an outage).
 * Every error that does not come from the server is a connection-level failure: with the offline
 * queue disabled, ioredis rejects at once when the connection is not ready.
 *
 * Whether the command may have run (`mayHaveSucceeded`): not when ioredis never wrote it, nor
 * when Redis refused it with a retryable reply (those are given before a script runs, or at its
 * first write, so it wrote nothing). Any other failure came after the command was written, and
 * the reply was lost: it may have run (a Redis that died after the write but before the reply).
 */
export function toEngineError(error: unknown): Error {
  if (error instanceof EngineUnavailableError) return error;
  const message = error instanceof Error ? error.message : String(error);
  const refusedByServer = error instanceof Error && error.name === "ReplyError";
  if (refusedByServer && !RETRYABLE_REPLY.test(message)) {
    // Callers may map the same reply twice (a port, then start()): count it once.
    if (!countedReplies.has(error)) {
      countedReplies.add(error);
      commandErrors.reply++;
    }
    return error;
  }
  commandErrors.unavailable++;
  return new EngineUnavailableError(`redis unavailable: ${message}`, {
    cause: error,
    mayHaveSucceeded: !refusedByServer && !NOT_WRITTEN.test(message),
  });
}

/** A script reply of `count` integers; anything else is a bug in a script, not an outage. */
export function integers<T extends number[]>(reply: unknown, count: T["length"], what: string): T {
  if (
    !Array.isArray(reply) ||
    reply.length !== count ||
    !reply.every((value) => typeof value === "number")
  ) {
    throw new Error(`unexpected reply from the ${what} script: ${JSON.stringify(reply)}`);
  }
  return reply as T;
}

/** A script's reply that is a list of integers of any length. */
export function numbers(reply: unknown, what: string): number[] {
  if (!Array.isArray(reply) || !reply.every((value) => typeof value === "number")) {
    throw new Error(`unexpected reply from the ${what} script: ${JSON.stringify(reply)}`);
  }
  return reply;
}

export function strings(reply: unknown, what: string): string[] {
  if (!Array.isArray(reply) || !reply.every((value) => typeof value === "string")) {
    throw new Error(`unexpected reply from the ${what} script: ${JSON.stringify(reply)}`);
  }
  return reply;
}
