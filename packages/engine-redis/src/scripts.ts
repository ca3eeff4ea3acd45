/**
 * The Lua scripts of the Redis engine. Each port operation that must be atomic is one script, so
 * it costs one round trip (EVALSHA; see script-runner.ts for the NOSCRIPT fallback) and no other
 * client can observe or interleave with a half-done change.
 *
 * Invariants every script keeps (keys as in keys.ts):
 * - `presence:count[u]` = Σ over nodes of `presence:node:<n>[u]`; zero counts are deleted;
 * - `u ∈ presence:online` ⇔ `presence:count[u] > 0`; every change of that membership publishes
 *   exactly one presence frame on the broadcast channel, from the same script, so frames are
 *   totally ordered and each one's list is the set at that moment;
 * - every node with a `presence:node:<n>` hash is in `nodes`, so a dead node's hash is always
 *   found by the sweep and never becomes a ghost.
 *
 * Presence frames are built by concatenation with a JSON string encoder that writes exactly what
 * JavaScript's JSON.stringify writes: Redis' cjson escapes "/" as "\/" and orders object keys
 * arbitrarily, and these frames must be byte-identical to protocol's `presenceFrame()`.
 *
 * The Lua is kept in template literals; only JSON_STRING, which has backslashes, is String.raw.
 *
 * Lua numbers are doubles: integers (positions, seqs, microsecond times) are formatted with
 * `%d`/`%.0f`, never with `..`, which would switch to exponent notation above 1e14.
 */
import { createHash } from "node:crypto";

export interface LuaScript {
  readonly name: string;
  readonly lua: string;
  readonly sha: string;
  /** How many of the leading arguments are keys (EVALSHA's numkeys). */
  readonly numberOfKeys: number;
}

function script(name: string, numberOfKeys: number, ...parts: string[]): LuaScript {
  const lua = parts.join("\n");
  return { name, lua, numberOfKeys, sha: createHash("sha1").update(lua).digest("hex") };
}

// -------------------------------------------------------------------------------------------
// Shared helpers, prepended to the scripts that use them (scripts cannot define globals).

const JSON_STRING = String.raw`
-- A JSON string literal, byte-identical to JavaScript's JSON.stringify of the same string.
local JSON_ESCAPES = {
  ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
  ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t',
}
local function json_string(s)
  local escaped = string.gsub(s, '[%z\1-\31"\\]', function(c)
    return JSON_ESCAPES[c] or string.format('\\u%04x', string.byte(c))
  end)
  return '"' .. escaped .. '"'
end
`;

const PRESENCE = `
-- protocol presenceFrame(user, status, members), byte for byte.
local function presence_frame(user, status, members)
  local listed = {}
  for i = 1, #members do listed[i] = json_string(members[i]) end
  return '{"type":"presence","userId":' .. json_string(user) .. ',"status":"' .. status
    .. '","onlineUsers":[' .. table.concat(listed, ',') .. ']}'
end

-- Changes user's cluster-wide connection total by delta and keeps the online set in step with
-- it, announcing a join or a leave on the broadcast channel. Returns the new total.
local function adjust_total(count_key, online_key, channel, user, delta)
  local total = redis.call('HINCRBY', count_key, user, delta)
  if total <= 0 then
    redis.call('HDEL', count_key, user)
    if redis.call('SREM', online_key, user) == 1 then
      redis.call('PUBLISH', channel,
        presence_frame(user, 'offline', redis.call('SMEMBERS', online_key)))
    end
  elseif redis.call('SADD', online_key, user) == 1 then
    redis.call('PUBLISH', channel,
      presence_frame(user, 'online', redis.call('SMEMBERS', online_key)))
  end
  return total
end

-- Removes every connection a node registered, then the node itself.
local function drop_node(node_id, node_key, alive_key, count_key, online_key, nodes_key, channel)
  local entries = redis.call('HGETALL', node_key)
  for i = 1, #entries, 2 do
    adjust_total(count_key, online_key, channel, entries[i], -tonumber(entries[i + 1]))
  end
  redis.call('DEL', node_key, alive_key)
  redis.call('SREM', nodes_key, node_id)
  return #entries / 2
end
`;

const MGET_ALL = `
-- MGET of any number of keys (unpack() is limited by the Lua C stack, so go in batches).
local function mget_all(keys)
  local values = {}
  for first = 1, #keys, 1000 do
    local batch = redis.call('MGET', unpack(keys, first, math.min(first + 999, #keys)))
    for i = 1, #batch do values[first + i - 1] = batch[i] end
  end
  return values
end
`;

// -------------------------------------------------------------------------------------------
// Presence

/**
 * One more connection of a user on this node.
 * KEYS: presence:node:<self>, presence:count, presence:online, nodes
 * ARGV: userId, nodeId, broadcast channel
 * Returns the user's new total.
 */
export const CONNECT = script(
  "connect",
  4,
  JSON_STRING,
  PRESENCE,
  `
redis.call('SADD', KEYS[4], ARGV[2])
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
return adjust_total(KEYS[2], KEYS[3], ARGV[3], ARGV[1], 1)
`,
);

/**
 * One connection fewer of a user on this node; a no-op (returns -1) when this node has none.
 * KEYS: presence:node:<self>, presence:count, presence:online
 * ARGV: userId, broadcast channel
 * Returns the user's new total.
 */
export const DISCONNECT = script(
  "disconnect",
  3,
  JSON_STRING,
  PRESENCE,
  `
local mine = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if mine <= 0 then return -1 end
if mine == 1 then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
end
return adjust_total(KEYS[2], KEYS[3], ARGV[2], ARGV[1], -1)
`,
);

/**
 * Makes Redis agree with this node's own record of its connections, and (re)registers the node:
 * at start (with nothing: removes what a previous process with this node id left), after a
 * reconnect, and when the heartbeat finds that this node was declared dead. The node's hash is
 * replaced; totals move by the difference, announcing users who came or went.
 * KEYS: presence:node:<self>, presence:count, presence:online, nodes, node-alive:<self>
 * ARGV: nodeId, nodeTtlMs, broadcast channel, then userId, count pairs
 * Returns how many users' counts changed.
 */
export const REASSERT = script(
  "reassert",
  5,
  JSON_STRING,
  PRESENCE,
  `
local had = {}
local registered = redis.call('HGETALL', KEYS[1])
for i = 1, #registered, 2 do had[registered[i]] = tonumber(registered[i + 1]) end
redis.call('DEL', KEYS[1])
local changed = 0
for i = 4, #ARGV, 2 do
  local user, count = ARGV[i], tonumber(ARGV[i + 1])
  redis.call('HSET', KEYS[1], user, count)
  local delta = count - (had[user] or 0)
  if delta ~= 0 then changed = changed + 1 end
  -- Also for delta 0: re-checks the online set against the total.
  adjust_total(KEYS[2], KEYS[3], ARGV[3], user, delta)
  had[user] = nil
end
for user, count in pairs(had) do
  adjust_total(KEYS[2], KEYS[3], ARGV[3], user, -count)
  changed = changed + 1
end
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('SET', KEYS[5], '1', 'PX', ARGV[2])
return changed
`,
);

/**
 * The heartbeat and the sweep, every heartbeatIntervalMs: refreshes this node's liveness key if
 * it still exists, and drops every other node whose liveness key expired (a crashed node).
 * When this node's own key had expired it answers 0 and the node re-asserts (REASSERT), since
 * another node may have swept it meanwhile.
 * KEYS: nodes, node-alive:<self>, presence:count, presence:online
 * ARGV: nodeId, nodeTtlMs, presence:node: key head, node-alive: key head, broadcast channel
 * Returns { 1 if this node was still alive else 0, nodes swept }.
 */
export const TICK = script(
  "tick",
  4,
  JSON_STRING,
  PRESENCE,
  `
local alive = redis.call('SET', KEYS[2], '1', 'PX', ARGV[2], 'XX')
local swept = 0
local nodes = redis.call('SMEMBERS', KEYS[1])
for i = 1, #nodes do
  local id = nodes[i]
  if id ~= ARGV[1] and redis.call('EXISTS', ARGV[4] .. id) == 0 then
    drop_node(id, ARGV[3] .. id, ARGV[4] .. id, KEYS[3], KEYS[4], KEYS[1], ARGV[5])
    swept = swept + 1
  end
end
if alive then return { 1, swept } end
return { 0, swept }
`,
);

/**
 * Unregisters this node (close): its users' connections go away at once, announced as usual.
 * KEYS: presence:node:<self>, node-alive:<self>, presence:count, presence:online, nodes
 * ARGV: nodeId, broadcast channel
 * Returns how many users the node had.
 */
export const DROP_NODE = script(
  "drop_node",
  5,
  JSON_STRING,
  PRESENCE,
  `
return drop_node(ARGV[1], KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[2])
`,
);

// -------------------------------------------------------------------------------------------
// Messages

/**
 * Stores a direct message and routes it, atomically with presence (the hot path: one round trip).
 * The node sends the message JSON without its closing brace; the script appends the seq, so the
 * stored text is exactly protocol `encodeMessage` (keys id, from, to, content, timestamp, seq).
 * Publishing from inside the script makes "stored" and "routed" one step: a recipient whose
 * presence was registered (after it subscribed) before this script ran gets the event; one who
 * registers after it finds the message in its queue.
 * KEYS: 1 conv-seq:<c>, 2 conv:<c>, 3 msg:<id>, 4 inbox-pos:<from>, 5 inbox-pos:<to>,
 *       6 inbox:<from>, 7 inbox:<to>, 8 presence:count, 9 queue:<to>
 * ARGV: 1 id, 2 from, 3 to, 4 message JSON head, 5 recipient channel, 6 sender channel,
 *       7 sender connection id
 * Returns { seq, 1 delivered / 0 queued, sender position, recipient position }.
 */
export const APPEND = script(
  "append",
  9,
  `
local id = ARGV[1]
if redis.call('EXISTS', KEYS[3]) == 1 then
  return redis.error_reply('ERR mrezhen: duplicate message id ' .. id)
end
local seq = redis.call('INCR', KEYS[1])
local json = ARGV[4] .. string.format(',"seq":%d}', seq)
redis.call('SET', KEYS[3], json)
redis.call('ZADD', KEYS[2], seq, id)
local sender_position = redis.call('INCR', KEYS[4])
local recipient_position = redis.call('INCR', KEYS[5])
redis.call('ZADD', KEYS[6], sender_position, id)
redis.call('ZADD', KEYS[7], recipient_position, id)

-- Event payload, see codec.ts: m|<position>|<excludeConnId>|<messageId>|<messageJson>
local delivered = 0
if tonumber(redis.call('HGET', KEYS[8], ARGV[3]) or '0') > 0 then
  redis.call('PUBLISH', ARGV[5], string.format('m|%d||', recipient_position) .. id .. '|' .. json)
  delivered = 1
else
  redis.call('ZADD', KEYS[9], recipient_position, id)
end
-- The sending connection gets an ack; the sender's other connections, if any, a copy.
if tonumber(redis.call('HGET', KEYS[8], ARGV[2]) or '0') > 1 then
  redis.call('PUBLISH', ARGV[6],
    string.format('m|%d|', sender_position) .. ARGV[7] .. '|' .. id .. '|' .. json)
end
return { seq, delivered, sender_position, recipient_position }
`,
);

/**
 * The newest `limit` messages of a conversation, oldest first.
 * KEYS: conv:<c>
 * ARGV: limit (> 0), msg: key head
 */
export const HISTORY = script(
  "history",
  1,
  MGET_ALL,
  `
local ids = redis.call('ZRANGE', KEYS[1], -tonumber(ARGV[1]), -1)
local keys = {}
for i = 1, #ids do keys[i] = ARGV[2] .. ids[i] end
local texts = mget_all(keys)
local out = {}
for i = 1, #ids do
  if texts[i] then out[#out + 1] = texts[i] end
end
return out
`,
);

/**
 * Takes a user's whole offline queue, in position order; whoever runs it first gets everything.
 * KEYS: queue:<user>
 * ARGV: msg: key head
 * Returns a flat list { messageId, position, messageJson, ... }.
 */
export const TAKE_QUEUED = script(
  "take_queued",
  1,
  MGET_ALL,
  `
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
if #entries == 0 then return {} end
redis.call('DEL', KEYS[1])
local keys = {}
for i = 1, #entries, 2 do keys[#keys + 1] = ARGV[1] .. entries[i] end
local texts = mget_all(keys)
local out = {}
for i = 1, #keys do
  local text = texts[i]
  if text then
    out[#out + 1] = entries[2 * i - 1]
    out[#out + 1] = entries[2 * i]
    out[#out + 1] = text
  end
end
return out
`,
);

/**
 * Queues a stored message for a user if, and only if, the user has no connection anywhere.
 * KEYS: presence:count, queue:<user>, msg:<id>
 * ARGV: userId, position, messageId
 * Returns 1 when queued.
 */
export const REQUEUE_IF_OFFLINE = script(
  "requeue_if_offline",
  3,
  `
if tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') > 0 then return 0 end
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[3])
return 1
`,
);

// -------------------------------------------------------------------------------------------
// Rate limiting

/**
 * Exact sliding window: the times of the last `limit` allowed actions, in a sorted set scored in
 * microseconds of Redis' own clock (TIME), so the nodes' clock skew does not matter. An action is
 * allowed when fewer than `limit` remain after dropping those at least `windowMs` old; a refused
 * action is not recorded.
 * KEYS: rate:<key>
 * ARGV: limit, windowMs, a member suffix unique to the caller (node id + counter)
 * Returns { 1 allowed / 0 refused, retryAfterMs }.
 */
export const CONSUME = script(
  "consume",
  1,
  `
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local window = tonumber(ARGV[2]) * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], string.format('%.0f', now), string.format('%.0f:', now) .. ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return { 1, 0 }
end
local oldest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
return { 0, math.ceil((oldest + window - now) / 1000) }
`,
);

export const ALL_SCRIPTS: readonly LuaScript[] = [
  CONNECT,
  DISCONNECT,
  REASSERT,
  TICK,
  DROP_NODE,
  APPEND,
  HISTORY,
  TAKE_QUEUED,
  REQUEUE_IF_OFFLINE,
  CONSUME,
];
