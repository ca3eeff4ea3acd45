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
import type { Redis } from "ioredis";
import type { LuaScript } from "./scripts.js";

export type ScriptArgument = string | number;

/** Runs `script` with `args` = its keys followed by its other arguments. Rejects with toEngineError. */
export async function runScript(
  client: Redis,
  script: LuaScript,
  args: readonly ScriptArgument[],
): Promise<unknown> {
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

/**
 * Sends the commands issued in one tick in one write. ioredis writes each command to its socket
 * at once, a syscall each; under load one batch of replies resumes dozens of handlers in the same
 * tick, each issuing its next script (an append after its rate-limit check). The socket is
 * corked until the tick's callbacks and promise continuations are done, then the commands leave
 * together, in the order they were issued: the same bytes, in one writev. The broker does the
 * same for SUBSCRIBE and UNSUBSCRIBE: in a connect storm, one write per subscription was the
 * node's largest single cost after the upgrade itself (its CPU profile: 7 % of the storm).
 */
export function coalesceWrites(client: Redis): void {
  const { stream } = client;
  if (stream === undefined || corked.has(stream)) return;
  corked.add(stream);
  stream.cork();
  process.nextTick(uncork, stream);
}

const corked = new WeakSet<Redis["stream"]>();

function uncork(stream: Redis["stream"]): void {
  corked.delete(stream);
  stream.uncork();
}

/** Loads every script, so that the first call of each is already a hit. */
export async function loadScripts(client: Redis, scripts: readonly LuaScript[]): Promise<void> {
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

export function strings(reply: unknown, what: string): string[] {
  if (!Array.isArray(reply) || !reply.every((value) => typeof value === "string")) {
    throw new Error(`unexpected reply from the ${what} script: ${JSON.stringify(reply)}`);
  }
  return reply;
}
