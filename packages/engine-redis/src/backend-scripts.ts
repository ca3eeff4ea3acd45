/**
 * Lua of the server API and the webhook queue, apart from scripts.ts (being reworked). Same
 * conventions: integers formatted with `%d`, never with `..`.
 */
import { createHash } from "node:crypto";
import type { LuaScript } from "./scripts.js";

function script(name: string, numberOfKeys: number, lua: string): LuaScript {
  return { name, lua, numberOfKeys, sha: createHash("sha1").update(lua).digest("hex") };
}

/**
 * Revokes a user's tokens issued before a time, never moving an earlier revocation back, and
 * tells every node (their copies). O(1).
 * KEYS: revoked
 * ARGV: userId, before (ms), revocations channel
 * Returns the revocation now in force (ms, as a string).
 */
export const REVOKE = script(
  "revoke",
  1,
  `
local before = tonumber(ARGV[2])
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if before > current then
  redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', before))
else
  before = current
end
redis.call('PUBLISH', ARGV[3], string.format('%d|', before) .. ARGV[1])
return string.format('%d', before)
`,
);

/**
 * Queues a presence event once for the cluster: every node sees every presence change and runs
 * this with the change's version; the first run of a version above every one queued so far
 * adds it, the others (and older versions) add nothing. Nodes get the changes in one order and
 * each node's scripts run in the order it sends them, so the stream holds the changes in
 * version order too. O(1).
 * KEYS: webhook-events, webhook-presence-version
 * ARGV: version, event JSON
 * Returns 1 when queued, 0 when another node already did.
 */
export const QUEUE_PRESENCE_EVENT = script(
  "queue_presence_event",
  2,
  `
local version = tonumber(ARGV[1])
if version <= tonumber(redis.call('GET', KEYS[2]) or '0') then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[1], '*', 'e', ARGV[2])
return 1
`,
);

export const BACKEND_SCRIPTS: readonly LuaScript[] = [REVOKE, QUEUE_PRESENCE_EVENT];
