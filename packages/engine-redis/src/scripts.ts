/**
 * The Lua scripts of the Redis engine. Each port operation that must be atomic is one script, so
 * it costs one round trip (EVALSHA; see script-runner.ts for the NOSCRIPT fallback) and no other
 * client can observe or interleave with a half-done change.
 *
 * Invariants every script keeps (keys as in keys.ts):
 * - `presence:count[u]` = Σ over nodes of `presence:node:<n>[u]`; zero counts are deleted;
 * - `u ∈ presence:online` ⇔ `presence:count[u] > 0`; every change of that membership increments
 *   `presence:version` and publishes exactly one delta carrying the new version on the broadcast
 *   channel (codec.ts: `p|<version>|on|<user>`, `p|<version>|off|<user>`), from the same script
 *   as the change: deltas are totally ordered, numbered without gaps, and version v is the set
 *   right after the v-th change. A delta is O(1) to build whatever the number of online users;
 *   each node keeps its own copy of the set from them (presence-mirror.ts);
 * - every node with a `presence:node:<n>` hash is in `nodes`, so a dead node's hash is always
 *   found by the sweep and never becomes a ghost;
 * - a message id in an index (`conv-log`, `inbox-log`, `queue`) or in `conv-last` names a text
 *   that exists or expired; texts are only ever removed by their TTL, so an entry whose text is
 *   gone is dead for good and any script may drop it;
 * - a log (`conv-log`, `inbox-log`) holds `<position>|<id>` entries in increasing position order:
 *   APPEND pushes each position once, at the tail, and entries only leave from the head (cap,
 *   dead texts) or all at once (TTL);
 * - `seq`, positions and watermarks only go up.
 *
 * Costs: connect and disconnect are O(1) each (PRESENCE_BATCH: many per round trip); the heartbeat (TICK) is O(nodes) when no node is dead;
 * dropping a node (sweep, close, re-assert) is O(its users), one O(1) delta per user whose status
 * changed. No script reads the whole online set except SNAPSHOT, which a node runs at start and
 * when it lost deltas (after a reconnect, or on a version gap).
 *
 * Receipt frames need no JSON encoder: their only string, the acting user, is known to the node,
 * which passes protocol `receiptFrame()` split around `upTo`; the script puts the seq in between.
 * Scripts that need the sender of a stored text read its JSON literal in place (MESSAGE_TEXT)
 * rather than with cjson, which refuses the lone-surrogate escapes JSON.stringify writes.
 *
 * The Lua is kept in template literals; only MESSAGE_TEXT, which has backslashes, is String.raw.
 *
 * Lua numbers are doubles: integers (positions, seqs, versions, microsecond times) are formatted
 * with `%d`/`%.0f`, never with `..`, which would switch to exponent notation above 1e14.
 */
import { createHash } from "node:crypto";

export interface LuaScript {
  readonly name: string;
  readonly lua: string;
  readonly sha: string;
  /** How many of the leading arguments are keys (EVALSHA's numkeys). */
  readonly numberOfKeys: number;
}

export function script(name: string, numberOfKeys: number, ...parts: string[]): LuaScript {
  const lua = parts.join("\n");
  return { name, lua, numberOfKeys, sha: createHash("sha1").update(lua).digest("hex") };
}

// -------------------------------------------------------------------------------------------
// Shared helpers, prepended to the scripts that use them (scripts cannot define globals).

export const RATE_WINDOW = `
-- The sliding window of CONSUME (see there): counts one action of the list at key if
-- limit_text (a count) and window_text (ms) allow it. Returns 1, 0 or 0, retry after (ms).
local function consume_rate(key, limit_text, window_text)
  local time = redis.call('TIME')
  local now = time[1] * 1000000 + time[2]
  local window = window_text * 1000
  local decisive = redis.call('LINDEX', key, '-' .. limit_text)
  if decisive and now - decisive < window then
    return 0, math.ceil((decisive + window - now) / 1000)
  end
  local length = redis.call('RPUSH', key, string.format('%d', now))
  redis.call('PEXPIRE', key, window_text)
  if length > tonumber(limit_text) then
    redis.call('LTRIM', key, '-' .. limit_text, '-1')
  elseif length % 64 == 0 then
    while true do
      local head = redis.call('LRANGE', key, '0', '63')
      local old = 0
      while old < #head and now - head[old + 1] >= window do old = old + 1 end
      if old == 0 then break end
      redis.call('LTRIM', key, string.format('%d', old), '-1')
      if old < 64 then break end
    end
  end
  return 1, 0
end
`;

const PRESENCE = `
-- Changes user's cluster-wide connection total by delta and keeps the online set in step with
-- it. When the user's membership changes (total 0 -> positive or back), bumps the presence
-- version and publishes the change as a delta with that version (codec.ts). O(1).
-- p = { count = presence:count, online = presence:online, version = presence:version,
--       channel = broadcast channel }. Returns the new total.
local function adjust_total(p, user, delta)
  local total = redis.call('HINCRBY', p.count, user, delta)
  local status
  if total <= 0 then
    redis.call('HDEL', p.count, user)
    if redis.call('SREM', p.online, user) == 1 then status = 'off' end
  elseif redis.call('SADD', p.online, user) == 1 then
    status = 'on'
  end
  if status then
    local version = redis.call('INCR', p.version)
    redis.call('PUBLISH', p.channel, string.format('p|%d|', version) .. status .. '|' .. user)
  end
  return total
end

-- Removes every connection a node registered, then the node itself. O(its users).
local function drop_node(p, node_id, node_key, alive_key, nodes_key)
  local entries = redis.call('HGETALL', node_key)
  for i = 1, #entries, 2 do
    adjust_total(p, entries[i], -tonumber(entries[i + 1]))
  end
  redis.call('DEL', node_key, alive_key)
  redis.call('SREM', nodes_key, node_id)
  return #entries / 2
end
`;

export const MGET_ALL = `
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

export const HMGET_ALL = `
-- HMGET of any number of fields, in batches as mget_all.
local function hmget_all(key, fields)
  local values = {}
  for first = 1, #fields, 1000 do
    local batch = redis.call('HMGET', key, unpack(fields, first, math.min(first + 999, #fields)))
    for i = 1, #batch do values[first + i - 1] = batch[i] end
  end
  return values
end
`;

/**
 * The values of many fields of a hash (false where absent), aligned with the fields asked for.
 * Redis keeps a hash of up to hash-max-listpack-entries fields (128 by default; 512 on some
 * distributions' configs) as a listpack, which HMGET scans once per field: 1,000 fields of a
 * 500-entry listpack took over 1 ms. Such a hash, or one no bigger than the fields asked for, is
 * read whole (HGETALL) and looked up in Lua; a large one, for a few fields, by HMGET.
 * Needs HMGET_ALL.
 */
export const HASH_VALUES = `
local function hash_values(key, fields)
  if #fields <= 16 then return hmget_all(key, fields) end
  local size = redis.call('HLEN', key)
  if size > 512 and size > #fields then return hmget_all(key, fields) end
  local flat = redis.call('HGETALL', key)
  local map = {}
  for i = 1, #flat, 2 do map[flat[i]] = flat[i + 1] end
  local values = {}
  for i = 1, #fields do values[i] = map[fields[i]] or false end
  return values
end
`;

// -------------------------------------------------------------------------------------------
// Presence

/**
 * Registers and unregisters connections of this node, many in one script: a batch of the calls
 * a node issued within a few milliseconds (presence.ts), applied in the order they were issued,
 * each exactly as a lone call would be. O(1) per call, one delta per user whose membership
 * changed; a connect storm costs one round trip per batch instead of one per connection.
 *
 * A connect also tells whether the user's offline queue exists (holds entries) once the
 * connection is registered, in the same atomic step: every write to a queue (APPEND, the group
 * scripts, REQUEUE_IF_OFFLINE) decides "queued" against presence:count atomically and queues
 * only for a user with no connection, so a queue found empty here stays empty while the
 * connection is registered, and the node's flush can skip reading it (service.ts). Cluster mode
 * cannot check (the queue is in the user's slot, presence in `{p}`): the node passes no queue
 * head and reads the queue as before.
 * KEYS: presence:node:<self>, presence:count, presence:online, nodes, presence:version
 * ARGV: nodeId, broadcast channel, queue key head ('' in cluster mode: not checked), then one
 * per call: `+<userId>` (one more connection of the user on this node) or `-<userId>` (one
 * fewer; a no-op when this node has none)
 * Returns the positions (1-based, among the calls) of the connects whose user's queue exists.
 */
export const PRESENCE_BATCH = script(
  "presence_batch",
  5,
  PRESENCE,
  `
local p = { count = KEYS[2], online = KEYS[3], version = KEYS[5], channel = ARGV[2] }
local queue_head = ARGV[3]
local registered = false
local queued = {}
for i = 4, #ARGV do
  local call = ARGV[i]
  local user = string.sub(call, 2)
  if string.byte(call, 1) == 43 then -- '+'
    if not registered then
      redis.call('SADD', KEYS[4], ARGV[1])
      registered = true
    end
    redis.call('HINCRBY', KEYS[1], user, 1)
    adjust_total(p, user, 1)
    if queue_head ~= '' and redis.call('EXISTS', queue_head .. user) == 1 then
      queued[#queued + 1] = i - 3
    end
  else
    local mine = tonumber(redis.call('HGET', KEYS[1], user) or '0')
    if mine == 1 then
      redis.call('HDEL', KEYS[1], user)
      adjust_total(p, user, -1)
    elseif mine > 1 then
      redis.call('HINCRBY', KEYS[1], user, -1)
      adjust_total(p, user, -1)
    end
  end
end
return queued
`,
);

/**
 * Makes Redis agree with this node's own record of its connections, and (re)registers the node:
 * at start (with nothing: removes what a previous process with this node id left), after a
 * reconnect, and when the heartbeat finds that this node was declared dead. The node's hash is
 * replaced; totals move by the difference, announcing users who came or went (one delta each).
 * O(users this node had or has).
 * KEYS: presence:node:<self>, presence:count, presence:online, nodes, node-alive:<self>,
 *       presence:version
 * ARGV: nodeId, nodeTtlMs, broadcast channel, then userId, count pairs
 * Returns how many users' counts changed.
 */
export const REASSERT = script(
  "reassert",
  6,
  PRESENCE,
  `
local p = { count = KEYS[2], online = KEYS[3], version = KEYS[6], channel = ARGV[3] }
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
  adjust_total(p, user, delta)
  had[user] = nil
end
for user, count in pairs(had) do
  adjust_total(p, user, -count)
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
 * O(nodes) when no node is dead; a dead node costs O(its users) once, one delta per user who
 * went offline.
 *
 * When this node's own key had expired it answers 0 and sweeps nothing: the node re-asserts
 * (REASSERT), since another node may have swept it meanwhile. Not sweeping then matters: keys
 * lapse when their owners' heartbeats cannot get through in time, and when that is Redis' fault
 * (a stall: a long script, a fork, a saturated CPU) every key lapsed at once; the first node to
 * tick afterwards must not declare all the others dead. (The ~1 s ticks seen in the benchmark
 * were such sweeps of live nodes, whose heartbeats queued behind O(online) connect scripts,
 * each sweep then costing O(users × online) to build a frame per user. Connects are O(1) now.)
 * KEYS: nodes, node-alive:<self>, presence:count, presence:online, presence:version
 * ARGV: nodeId, nodeTtlMs, presence:node: key head, node-alive: key head, broadcast channel
 * Returns { 1 if this node was still alive else 0, nodes swept }.
 */
export const TICK = script(
  "tick",
  5,
  PRESENCE,
  `
if not redis.call('SET', KEYS[2], '1', 'PX', ARGV[2], 'XX') then return { 0, 0 } end
local p = { count = KEYS[3], online = KEYS[4], version = KEYS[5], channel = ARGV[5] }
local swept = 0
local nodes = redis.call('SMEMBERS', KEYS[1])
for i = 1, #nodes do
  local id = nodes[i]
  if id ~= ARGV[1] and redis.call('EXISTS', ARGV[4] .. id) == 0 then
    drop_node(p, id, ARGV[3] .. id, ARGV[4] .. id, KEYS[1])
    swept = swept + 1
  end
end
return { 1, swept }
`,
);

/**
 * Unregisters this node (close): its users' connections go away at once, announced as usual.
 * O(its users).
 * KEYS: presence:node:<self>, node-alive:<self>, presence:count, presence:online, nodes,
 *       presence:version
 * ARGV: nodeId, broadcast channel
 * Returns how many users the node had.
 */
export const DROP_NODE = script(
  "drop_node",
  6,
  PRESENCE,
  `
local p = { count = KEYS[3], online = KEYS[4], version = KEYS[6], channel = ARGV[2] }
return drop_node(p, ARGV[1], KEYS[1], KEYS[2], KEYS[5])
`,
);

/**
 * The online set and the version it stands at, read together (presence-mirror.ts): every delta
 * with a higher version is a change made after this snapshot. O(online users); a node runs it
 * at start and when it lost deltas, never per change.
 * KEYS: presence:version, presence:online
 * Returns { version (a decimal string, "0" before any change), { userId, ... } }.
 */
export const SNAPSHOT = script(
  "presence_snapshot",
  2,
  `
return { redis.call('GET', KEYS[1]) or '0', redis.call('SMEMBERS', KEYS[2]) }
`,
);

// -------------------------------------------------------------------------------------------
// Messages

export const INDEX = `
-- ZREM / HDEL of any number of members (in batches, like mget_all).
local function zrem_all(key, members)
  for first = 1, #members, 1000 do
    redis.call('ZREM', key, unpack(members, first, math.min(first + 999, #members)))
  end
end
local function hdel_all(key, fields)
  for first = 1, #fields, 1000 do
    redis.call('HDEL', key, unpack(fields, first, math.min(first + 999, #fields)))
  end
end

-- Keeps the cap newest (highest-scored) entries of an index and renews its TTL (retention).
-- size_bound, when given, is an upper bound of the index's size (the counter that numbers its
-- entries): at or below cap there is nothing to trim, which spares the hot path a command.
local function cap_index(key, cap, ttl, size_bound)
  if not size_bound or size_bound > cap then
    redis.call('ZREMRANGEBYRANK', key, '0', string.format('%d', -cap - 1))
  end
  redis.call('PEXPIRE', key, ttl)
end
`;

export const LOG = `
-- A log is a list of '<position>|<message id>' entries, oldest first, with increasing positions
-- (seq for conv-log, inbox position for inbox-log). APPEND pushes every position it hands out, so
-- a log has no holes unless something else took positions (an older version of the engine that
-- kept sorted sets, during a rolling upgrade): seeking tries the no-holes index first and falls
-- back to a binary search, so holes cost a few reads and are never misread.

local function log_position(entry)
  return tonumber(string.sub(entry, 1, string.find(entry, '|', 1, true) - 1))
end

local function log_position_at(key, index)
  return log_position(redis.call('LINDEX', key, string.format('%d', index)))
end

-- The index of the first of the n entries of a log whose position is above after (an integer),
-- n when none is.
local function log_seek(key, n, after)
  if n == 0 or log_position_at(key, 0) > after then return 0 end
  local last = log_position_at(key, n - 1)
  if last <= after then return n end
  -- The entry at lo is at or below after; the one at hi is above.
  local lo, hi = 0, n - 1
  local guess = n + after - last
  if guess > lo and guess < hi then
    local position = log_position_at(key, guess)
    if position == after + 1 then return guess end
    if position > after then hi = guess else lo = guess end
  end
  while hi - lo > 1 do
    local mid = math.floor((lo + hi) / 2)
    if log_position_at(key, mid) > after then hi = mid else lo = mid end
  end
  return hi
end

-- Reads entries first..last of a log with their texts: ids, positions (strings), texts (false
-- when expired), in log order.
local function log_page(key, first, last, head)
  local page = redis.call('LRANGE', key, string.format('%d', first), string.format('%d', last))
  local ids, positions, keys = {}, {}, {}
  for i = 1, #page do
    local bar = string.find(page[i], '|', 1, true)
    positions[i] = string.sub(page[i], 1, bar - 1)
    ids[i] = string.sub(page[i], bar + 1)
    keys[i] = head .. ids[i]
  end
  return ids, positions, mget_all(keys)
end

-- Visits the entries of a log from index from towards the tail, as visit(id, position, text)
-- for those whose text still exists, until visit returns true; reads in pages of batch entries
-- (at least 256 after the first). Texts expire oldest first, so dead entries gather at the head:
-- a walk that starts there cuts off the dead entries it finds before the first live one (each
-- dead entry is walked over once). Indexes of the log change then: do not reuse them.
local function log_walk_up(key, from, head, batch, visit)
  local dead, counting = 0, from == 0
  local first = from
  while true do
    local ids, positions, texts = log_page(key, first, first + batch - 1, head)
    local stop = false
    for i = 1, #ids do
      if texts[i] then
        counting = false
        stop = visit(ids[i], positions[i], texts[i])
        if stop then break end
      elseif counting then
        dead = dead + 1
      end
    end
    if stop or #ids < batch then break end
    first = first + batch
    batch = math.max(batch, 256)
  end
  if dead > 0 then redis.call('LTRIM', key, string.format('%d', dead), '-1') end
end

-- Visits the entries of a log from index from towards the head, as visit(id, position, text) for
-- those whose text still exists, until visit returns true; pages as log_walk_up. A walk that
-- reaches the head cuts off the dead entries there (below the lowest live one). Indexes of the
-- log change then: do not reuse them.
local function log_walk_down(key, from, head, batch, visit)
  local lowest_live
  local last = from
  while last >= 0 do
    local first = math.max(0, last - batch + 1)
    local ids, positions, texts = log_page(key, first, last, head)
    for i = #ids, 1, -1 do
      if texts[i] then
        lowest_live = first + i - 1
        if visit(ids[i], positions[i], texts[i]) then return end
      end
    end
    last = first - 1
    batch = math.max(batch, 256)
  end
  local dead = lowest_live or from + 1
  if dead > 0 then redis.call('LTRIM', key, string.format('%d', dead), '-1') end
end
`;

export const MESSAGE_TEXT = String.raw`
-- Stored texts are protocol encodeMessage's, {"id":<string>,"from":<string>,...,"seq":N}: the
-- fixed key order lets a script read the fields it needs without decoding the whole text
-- (cjson would also refuse the lone surrogates JSON.stringify writes as \udxxx escapes).

-- The index of the quote that closes the JSON string literal whose opening quote is at start.
local function literal_end(text, start)
  local i = start + 1
  while true do
    local j = string.find(text, '["\\]', i)
    if not j then return nil end
    if string.byte(text, j) == 92 then i = j + 2 else return j end
  end
end

-- The sender of a stored message as its JSON string literal, quotes included (nil if malformed).
local function sender_literal(text)
  local id_end = literal_end(text, 7) -- the id's opening quote follows {"id":
  if not id_end or string.sub(text, id_end + 1, id_end + 8) ~= ',"from":' then return nil end
  local from_end = literal_end(text, id_end + 9)
  if not from_end then return nil end
  return string.sub(text, id_end + 9, from_end)
end

-- The seq of a stored message: always its last field (so only the tail is searched).
local function seq_of(text)
  return tonumber(string.match(text, ',"seq":(%d+)}$', math.max(1, #text - 32)))
end

local JSON_UNESCAPES = {
  ['"'] = '"', ['\\'] = '\\', ['/'] = '/', b = '\b', f = '\f', n = '\n', r = '\r', t = '\t',
}

local function utf8_char(code)
  if code < 0x80 then return string.char(code) end
  if code < 0x800 then
    return string.char(0xC0 + math.floor(code / 0x40), 0x80 + code % 0x40)
  end
  if code < 0x10000 then
    return string.char(0xE0 + math.floor(code / 0x1000), 0x80 + math.floor(code / 0x40) % 0x40,
      0x80 + code % 0x40)
  end
  return string.char(0xF0 + math.floor(code / 0x40000), 0x80 + math.floor(code / 0x1000) % 0x40,
    0x80 + math.floor(code / 0x40) % 0x40, 0x80 + code % 0x40)
end

-- The string a JSON string literal stands for, as the UTF-8 bytes Node sends for that string
-- (a lone surrogate becomes U+FFFD, as in Buffer.from), so it names the same keys and channels.
local function json_unliteral(literal)
  local body = string.sub(literal, 2, -2)
  if not string.find(body, '\\', 1, true) then return body end
  local out, i = {}, 1
  while true do
    local j = string.find(body, '\\', i, true)
    if not j then
      out[#out + 1] = string.sub(body, i)
      break
    end
    out[#out + 1] = string.sub(body, i, j - 1)
    local c = string.sub(body, j + 1, j + 1)
    if c == 'u' then
      local code = tonumber(string.sub(body, j + 2, j + 5), 16) or 0xFFFD
      i = j + 6
      if code >= 0xD800 and code < 0xDC00 and string.sub(body, i, i + 1) == '\\u' then
        local low = tonumber(string.sub(body, i + 2, i + 5), 16)
        if low and low >= 0xDC00 and low < 0xE000 then
          code = 0x10000 + (code - 0xD800) * 0x400 + (low - 0xDC00)
          i = i + 6
        end
      end
      if code >= 0xD800 and code < 0xE000 then code = 0xFFFD end
      out[#out + 1] = utf8_char(code)
    else
      out[#out + 1] = JSON_UNESCAPES[c] or c
      i = j + 2
    end
  end
  return table.concat(out)
end
`;

/**
 * Stores a direct message and routes it, atomically with presence (the hot path: one round trip).
 * The node sends the message JSON (protocol `encodeMessageWithoutSeq`) without its closing brace;
 * the script appends the seq, so the stored text is exactly protocol `encodeMessage`.
 * Publishing from inside the script makes "stored" and "routed" one step: a recipient whose
 * presence was registered (after it subscribed) before this script ran gets the event; one who
 * registers after it finds the message in its queue.
 *
 * Idempotency: with a clientMsgId (APPEND_IDEMPOTENT: KEYS 15, ARGV 10 and 11 given), an existing
 * idem record is the answer, with duplicate = 1, and nothing else happens (no store, no publish,
 * no TTL renewed). Otherwise the record is written with the result, PX ARGV 10:
 * `seq|status|senderPos|recipientPos|#id|<id><ts>` (#id in bytes). Check and store are one
 * script, so of concurrent retries exactly one stores. Without a clientMsgId those three are not
 * sent at all (every argument costs Redis a Lua string and a table slot).
 *
 * Indexes: the conversation's and both inboxes' are logs (LOG): RPUSH is O(1) and answers the
 * length, where ZADD on a sorted set scans its entries while it is small (listpack) and allocates
 * per entry once it is not. Only the offline queue, which requeueing inserts into by position,
 * is a sorted set.
 *
 * Retention: the text gets PX messageTtlMs; every index written (logs, queue) is capped at
 * maxEntries newest entries and gets PX messageTtlMs; the conversation lists are capped too, a
 * member capped away taking its conv-last field with it (see keys.ts). A cap is only checked
 * when the index can be over it: a log longer than cap after the push, a queue or a list whose
 * counter (position) is above cap.
 *
 * Commands of a delivered append without clientMsgId, below the caps (17): INCR, SET, RPUSH,
 * PEXPIRE (history); INCR ×2, RPUSH ×2, PEXPIRE ×2 (inboxes); ZADD ×2, HSET ×2 (conversation
 * lists); HINCRBY (unread); HMGET (presence of both users); PUBLISH.
 *
 * Rate limit and quotas (APPEND_LIMITED, APPEND_IDEMPOTENT_LIMITED: the last two keys and
 * ARGV 12 to 15 given): after the idempotency check (a duplicate is answered without counting),
 * the sender's daily quotas are read (`quota:<from>`, see keys.ts): the stored text's bytes, and
 * one new conversation when the pair has no seq yet, must fit what is left of the UTC day (by
 * Redis' clock, so nodes agree). Then the sliding window counts one action as CONSUME does. When
 * a quota or the window refuses, nothing has been written. The quotas are counted only once the
 * window allowed the message. Quota cost per message, inside the script: GET conv-seq (the seq
 * is then SET, not INCR'd), TIME, HMGET, HINCRBY; a new conversation adds an HINCRBY, the first
 * message of a user's day an HSET and a PEXPIRE (the hash expires at the next midnight).
 *
 * KEYS: 1 conv-seq:<c>, 2 conv-log:<c>, 3 msg:<id>, 4 inbox-pos:<from>, 5 inbox-pos:<to>,
 *       6 inbox-log:<from>, 7 inbox-log:<to>, 8 presence:count, 9 queue:<to>, 10 convs:<from>,
 *       11 convs:<to>, 12 conv-last:<from>, 13 conv-last:<to>, 14 unread:<to>,
 *       [15 idem:<from, clientMsgId>], [last two: rate-log:<from>, quota:<from>]
 * ARGV: 1 id, 2 from, 3 to, 4 message JSON head, 5 recipient channel, 6 sender channel,
 *       7 sender connection id, 8 messageTtlMs, 9 maxEntries,
 *       [10 idempotency TTL in ms, 11 timestamp (both "" when limited without clientMsgId)],
 *       [12 rate limit, 13 rate window in ms, 14 new conversations per day, 15 bytes per day]
 * Returns { seq, 1 delivered / 0 queued, sender position, recipient position, 0 } for a new
 * message, { seq, delivered, sender position, recipient position, 1, messageId, timestamp }
 * (the original's) for a duplicate, { 0, 0, 0, 0, 2, retryAfterMs } when rate-limited,
 * { 0, 0, 0, 0, 3, retryAfterMs } over the new-conversation quota and { 0, 0, 0, 0, 4,
 * retryAfterMs } over the byte quota (retryAfterMs: until the next UTC midnight).
 */
export const APPEND = script(
  "append",
  14,
  INDEX,
  RATE_WINDOW,
  `
local id, from, to = ARGV[1], ARGV[2], ARGV[3]
local ttl, cap = ARGV[8], tonumber(ARGV[9])
-- Behind the limits (ARGV 12 to 15 given) the last two keys are the sender's rate log and
-- quota hash, and the idempotency key, when there is one, stays KEYS[15].
local rate_key = ARGV[12] and KEYS[#KEYS - 1]
local quota_key = ARGV[12] and KEYS[#KEYS]
local idem_key = KEYS[15]
if rate_key and #KEYS == 16 then idem_key = nil end
if idem_key then
  local earlier = redis.call('GET', idem_key)
  if earlier then
    local seq, delivered, sp, rp, id_length, rest =
      string.match(earlier, '^(%d+)|(%d+)|(%d+)|(%d+)|(%d+)|()')
    id_length = tonumber(id_length)
    return { tonumber(seq), tonumber(delivered), tonumber(sp), tonumber(rp), 1,
      string.sub(earlier, rest, rest + id_length - 1), string.sub(earlier, rest + id_length) }
  end
end

local seq, seq_text, json, starts, bytes, today, day_left_ms, used
if quota_key then
  -- The seq is read, not INCR'd, so that a quota refusal leaves conv-seq as it was.
  seq = tonumber(redis.call('GET', KEYS[1]) or '0') + 1
  starts = seq == 1
  seq_text = string.format('%d', seq)
  json = ARGV[4] .. ',"seq":' .. seq_text .. '}'
  bytes = #json
  local time = redis.call('TIME')
  local seconds = tonumber(time[1])
  today = math.floor(seconds / 86400)
  day_left_ms = (today + 1) * 86400000 - seconds * 1000 - math.floor(tonumber(time[2]) / 1000)
  used = redis.call('HMGET', quota_key, 'day', 'conversations', 'bytes')
  if tonumber(used[1]) ~= today then used = nil end
  if starts and (used and tonumber(used[2]) or 0) + 1 > tonumber(ARGV[14]) then
    return { 0, 0, 0, 0, 3, day_left_ms }
  end
  if (used and tonumber(used[3]) or 0) + bytes > tonumber(ARGV[15]) then
    return { 0, 0, 0, 0, 4, day_left_ms }
  end
end

if rate_key then
  local allowed, retry_after_ms = consume_rate(rate_key, ARGV[12], ARGV[13])
  if allowed == 0 then return { 0, 0, 0, 0, 2, retry_after_ms } end
end

if quota_key then
  redis.call('SET', KEYS[1], seq_text)
else
  seq = redis.call('INCR', KEYS[1])
  -- Numbers go to Redis as strings formatted once: a Lua number argument costs a %.17g.
  seq_text = string.format('%d', seq)
  json = ARGV[4] .. ',"seq":' .. seq_text .. '}'
end
-- NX: a text is never overwritten. Ids are unique, so this refuses only on a bug; the seq just
-- taken is then given back (nothing else has happened, and no client can have seen it).
if not redis.call('SET', KEYS[3], json, 'PX', ttl, 'NX') then
  if seq == 1 then redis.call('DEL', KEYS[1]) else redis.call('DECR', KEYS[1]) end
  return redis.error_reply('ERR mrezhen: duplicate message id ' .. id)
end
if quota_key then
  if used then
    redis.call('HINCRBY', quota_key, 'bytes', bytes)
    if starts then redis.call('HINCRBY', quota_key, 'conversations', 1) end
  else
    -- The first message of the user's day: a fresh count, which expires with the day.
    redis.call('HSET', quota_key, 'day', string.format('%d', today),
      'conversations', starts and '1' or '0', 'bytes', string.format('%d', bytes))
    redis.call('PEXPIRE', quota_key, string.format('%d', day_left_ms))
  end
end
-- Pushes a log entry, keeps the log to cap entries and renews its TTL.
local function log_push(key, position_text)
  if redis.call('RPUSH', key, position_text .. '|' .. id) > cap then
    redis.call('LTRIM', key, '-' .. ARGV[9], '-1')
  end
  redis.call('PEXPIRE', key, ttl)
end
log_push(KEYS[2], seq_text)
local sender_position = redis.call('INCR', KEYS[4])
local recipient_position = redis.call('INCR', KEYS[5])
local sender_text = string.format('%d', sender_position)
local recipient_text = string.format('%d', recipient_position)
log_push(KEYS[6], sender_text)
log_push(KEYS[7], recipient_text)

-- Conversation lists, ordered by each user's own position of the last message, kept to cap
-- members with their conv-last fields. Only a new member can take a list over cap (the list has
-- at most cap members after every append), and a list has at most as many members as its user
-- has positions: so the size is checked only for a new member, past cap positions.
local function add_conversation(list_key, last_key, position, position_text, other)
  local added = redis.call('ZADD', list_key, position_text, other)
  redis.call('HSET', last_key, other, id)
  if added == 0 or position <= cap then return end
  local excess = redis.call('ZCARD', list_key) - cap
  if excess > 0 then
    local gone = redis.call('ZRANGE', list_key, 0, excess - 1)
    redis.call('ZREMRANGEBYRANK', list_key, 0, excess - 1)
    hdel_all(last_key, gone)
  end
end
add_conversation(KEYS[10], KEYS[12], sender_position, sender_text, to)
add_conversation(KEYS[11], KEYS[13], recipient_position, recipient_text, from)
redis.call('HINCRBY', KEYS[14], from, '1')

-- Connections of the recipient and of the sender, anywhere (absent: none).
local connections = redis.call('HMGET', KEYS[8], to, from)
-- Event payload, see codec.ts: m|<position>|<excludeConnId>|<messageId>|<messageJson>
local delivered = 0
if tonumber(connections[1] or '0') > 0 then
  redis.call('PUBLISH', ARGV[5], 'm|' .. recipient_text .. '||' .. id .. '|' .. json)
  delivered = 1
else
  redis.call('ZADD', KEYS[9], recipient_text, id)
  cap_index(KEYS[9], cap, ttl, recipient_position)
end
-- The sending connection gets an ack; the sender's other connections, if any, a copy.
if tonumber(connections[2] or '0') > 1 then
  redis.call('PUBLISH', ARGV[6],
    'm|' .. sender_text .. '|' .. ARGV[7] .. '|' .. id .. '|' .. json)
end
if idem_key then
  redis.call('SET', idem_key,
    string.format('%d|%d|%d|%d|%d|', seq, delivered, sender_position, recipient_position, #id)
      .. id .. ARGV[11],
    'PX', ARGV[10])
end
return { seq, delivered, sender_position, recipient_position, 0 }
`,
);

/** APPEND for a message with a clientMsgId: the same script, given its idempotency key too. */
export const APPEND_IDEMPOTENT: LuaScript = { ...APPEND, numberOfKeys: 15 };
/** APPEND behind the sender's limits (appendIfAllowed): KEYS 15 the rate log, 16 the quotas. */
export const APPEND_LIMITED: LuaScript = { ...APPEND, numberOfKeys: 16 };
/** Both: KEYS 15 the idempotency key, KEYS 16 the rate log, 17 the quotas. */
export const APPEND_IDEMPOTENT_LIMITED: LuaScript = { ...APPEND, numberOfKeys: 17 };

/**
 * A page of a conversation, going back from `before`: the newest `limit` messages whose text
 * still exists with a seq at most ARGV 2, oldest first, and whether older ones exist.
 * KEYS: conv-log:<c>
 * ARGV: 1 limit (≥ 0), 2 highest seq wanted (an integer, or +inf), 3 msg: key head
 * Returns { 1 if older messages exist else 0, text, text, ... } (oldest first).
 */
export const HISTORY = script(
  "history",
  1,
  MGET_ALL,
  LOG,
  `
local want = tonumber(ARGV[1]) + 1
local n = redis.call('LLEN', KEYS[1])
local last = n - 1
if ARGV[2] ~= '+inf' then last = log_seek(KEYS[1], n, tonumber(ARGV[2])) - 1 end
local found = {}
if last >= 0 then
  log_walk_down(KEYS[1], last, ARGV[3], want, function(_, _, text)
    found[#found + 1] = text
    return #found == want
  end)
end
local out = { 0 }
if #found == want then
  out[1] = 1
  found[want] = nil
end
for i = #found, 1, -1 do out[#out + 1] = found[i] end
return out
`,
);

/**
 * Part of a user's inbox (B2 sync): entries after a position, and where the inbox starts and ends.
 * An entry whose text expired counts as trimmed.
 * KEYS: inbox-log:<user>, inbox-pos:<user>
 * ARGV: 1 after (an integer ≥ 0), 2 limit (≥ 0), 3 msg: key head, 4 maxBytes: the page ends at
 *       the entry that brings its texts to this many bytes
 * Returns { oldest kept position (newest + 1 when none), newest position,
 *           messageId, position, messageJson, ... } (all strings).
 */
export const READ_INBOX = script(
  "read_inbox",
  2,
  MGET_ALL,
  LOG,
  `
local newest = tonumber(redis.call('GET', KEYS[2]) or '0')
local oldest = string.format('%d', newest + 1)
log_walk_up(KEYS[1], 0, ARGV[3], 1, function(_, position)
  oldest = position
  return true
end)
local out = { oldest, string.format('%d', newest) }
local want = tonumber(ARGV[2])
if want > 0 then
  local from = log_seek(KEYS[1], redis.call('LLEN', KEYS[1]), tonumber(ARGV[1]))
  local taken, bytes, max_bytes = 0, 0, tonumber(ARGV[4])
  log_walk_up(KEYS[1], from, ARGV[3], want, function(id, position, text)
    out[#out + 1] = id
    out[#out + 1] = position
    out[#out + 1] = text
    taken = taken + 1
    bytes = bytes + #text
    return taken == want or bytes >= max_bytes
  end)
end
return out
`,
);

/**
 * The common part of ACKNOWLEDGE (here) and ACKNOWLEDGE_CLUSTER (cluster-scripts.ts), after LOG
 * and MESSAGE_TEXT: what an ack of a user's inbox changes in the user's own keys.
 */
export const ACK_INBOX = `
-- A device of a user processed its inbox up to position up_to. keys: inbox-log, inbox-pos,
-- acked and delivered of the user. Raises the acked watermark (clamped to the newest position;
-- an ack at or below it changes nothing) and, for each sender of the messages received in the
-- newly covered positions, in order of first appearance, the user's delivered watermark for
-- them to the highest seq received from them there; calls raised(sender, seq) for each raise.
local function ack_inbox(keys, up_to, self_literal, head, raised)
  local acked = tonumber(redis.call('GET', keys[3]) or '0')
  if up_to <= acked then return end
  local newest = tonumber(redis.call('GET', keys[2]) or '0')
  local covered, senders = {}, {}
  local from = log_seek(keys[1], redis.call('LLEN', keys[1]), acked)
  log_walk_up(keys[1], from, head, 256, function(_, position, text)
    if tonumber(position) > up_to then return true end
    local literal = sender_literal(text)
    local seq = seq_of(text)
    if literal and seq and literal ~= self_literal then
      local other = json_unliteral(literal)
      local had = covered[other]
      if not had then senders[#senders + 1] = other end
      if not had or seq > had then covered[other] = seq end
    end
    return false
  end)
  if math.min(up_to, newest) > acked then
    redis.call('SET', keys[3], string.format('%d', math.min(up_to, newest)))
  end
  for _, other in ipairs(senders) do
    local seq = covered[other]
    if seq > tonumber(redis.call('HGET', keys[4], other) or '0') then
      redis.call('HSET', keys[4], other, string.format('%d', seq))
      raised(other, seq)
    end
  end
end
`;

/**
 * A device of the user processed its inbox up to a position. Raises the user's acked watermark
 * (clamped to the newest position; an ack at or below it changes nothing), and for each sender
 * of messages received in the newly covered positions (acked, upTo], in order of first
 * appearance, with the highest seq received from them there: when that seq is above the user's
 * delivered watermark for them, raises it, stores the receipt frame for the sender (its
 * `receipts` hash, field `delivered|<user>`) and publishes it to the sender's channel as a frame
 * event (codec.ts). The frame is ARGV 6 .. seq .. ARGV 7: protocol receiptFrame split around
 * upTo by the node, so it is byte-identical. Senders are read from the stored texts (their JSON
 * literal is compared with the user's, given by the node as JSON.stringify wrote it), and their
 * receipts key and channel built from the heads (not declared in KEYS, see keys.ts).
 * KEYS: inbox-log:<user>, inbox-pos:<user>, acked:<user>, delivered:<user>
 * ARGV: 1 upTo (integer), 2 the user's JSON literal, 3 userId, 4 msg: key head,
 *       5 receipts: key head, 6 receipt frame head, 7 receipt frame tail, 8 user channel head
 * Returns how many receipts it sent.
 */
export const ACKNOWLEDGE = script(
  "acknowledge",
  4,
  MGET_ALL,
  LOG,
  MESSAGE_TEXT,
  ACK_INBOX,
  `
local sent = 0
ack_inbox(KEYS, tonumber(ARGV[1]), ARGV[2], ARGV[4], function(other, seq)
  local frame = ARGV[6] .. string.format('%d', seq) .. ARGV[7]
  redis.call('HSET', ARGV[5] .. other, 'delivered|' .. ARGV[3], frame)
  redis.call('PUBLISH', ARGV[8] .. other, 'f|' .. frame)
  sent = sent + 1
end)
return sent
`,
);

/**
 * The user read the conversation with `other` up to a seq, capped at the conversation's last
 * seq. When that raises the user's read watermark: recounts the user's unread messages from
 * `other` (those above the mark whose text still exists, read from the conversation's tail:
 * at most maxEntries), stores the read receipt for `other` and publishes it to `other`'s channel.
 * KEYS: conv-seq:<c>, conv-log:<c>, read:<user>, unread:<user>, receipts:<other>
 * ARGV: 1 other, 2 upTo (integer), 3 other's JSON literal, 4 msg: key head,
 *       5 receipts field (`read|<user>`), 6 other's channel, 7 receipt frame head,
 *       8 receipt frame tail
 * Returns 1 when the watermark rose (a receipt was sent), else 0.
 */
export const MARK_READ = script(
  "mark_read",
  5,
  MGET_ALL,
  LOG,
  MESSAGE_TEXT,
  `
local last = redis.call('GET', KEYS[1])
if not last then return 0 end
local up_to = math.min(tonumber(ARGV[2]), tonumber(last))
if up_to <= tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0') then return 0 end
local mark = string.format('%d', up_to)
redis.call('HSET', KEYS[3], ARGV[1], mark)
local unread = 0
local from = log_seek(KEYS[2], redis.call('LLEN', KEYS[2]), up_to)
log_walk_up(KEYS[2], from, ARGV[4], 256, function(_, _, text)
  if sender_literal(text) == ARGV[3] then unread = unread + 1 end
  return false
end)
if unread > 0 then
  redis.call('HSET', KEYS[4], ARGV[1], unread)
else
  redis.call('HDEL', KEYS[4], ARGV[1])
end
local frame = ARGV[7] .. mark .. ARGV[8]
redis.call('HSET', KEYS[5], ARGV[5], frame)
redis.call('PUBLISH', ARGV[6], 'f|' .. frame)
return 1
`,
);

/**
 * A user's conversations, most recent first: the other user, the text of the conversation's last
 * message and the unread count. A conversation whose last text expired has no message left (texts
 * expire in append order) and leaves the list.
 * KEYS: convs:<user>, conv-last:<user>, unread:<user>
 * ARGV: 1 limit (> 0), 2 msg: key head
 * Returns { other, lastMessageJson, unread, ... }.
 */
export const CONVERSATIONS = script(
  "conversations",
  3,
  MGET_ALL,
  INDEX,
  HMGET_ALL,
  `
local want = tonumber(ARGV[1])
local out = {}
local found = 0
local upper = '+inf'
local batch = want
while found < want do
  local page = redis.call('ZREVRANGEBYSCORE', KEYS[1], upper, '-inf', 'WITHSCORES', 'LIMIT', 0, batch)
  if #page == 0 then break end
  local others = {}
  for i = 1, #page, 2 do others[#others + 1] = page[i] end
  local ids = hmget_all(KEYS[2], others)
  local unread = hmget_all(KEYS[3], others)
  local keys, at = {}, {}
  for i = 1, #others do
    if ids[i] then
      keys[#keys + 1] = ARGV[2] .. ids[i]
      at[i] = #keys
    end
  end
  local texts = mget_all(keys)
  local dead = {}
  for i = 1, #others do
    local text = at[i] and texts[at[i]]
    if not text then
      dead[#dead + 1] = others[i]
    elseif found < want then
      out[#out + 1] = others[i]
      out[#out + 1] = text
      out[#out + 1] = unread[i] or '0'
      found = found + 1
    end
  end
  if #dead > 0 then
    zrem_all(KEYS[1], dead)
    hdel_all(KEYS[2], dead)
  end
  if #page < 2 * batch then break end
  upper = '(' .. page[#page]
  batch = math.max(batch, 64)
end
return out
`,
);

/**
 * A page of a user's offline queue: the entries above a position, in position order, without
 * removing them (a flush removes what its connection confirmed, with ZREMRANGEBYSCORE). Entries
 * whose text expired are left out and removed.
 * KEYS: queue:<user>
 * ARGV: 1 after (an integer ≥ 0), 2 limit (≥ 1), 3 maxBytes: the page ends at the entry that
 *       brings its texts to this many bytes, 4 msg: key head
 * Returns a flat list { messageId, position, messageJson, ... }.
 */
export const READ_QUEUED = script(
  "read_queued",
  1,
  MGET_ALL,
  `
local want, max_bytes = tonumber(ARGV[2]), tonumber(ARGV[3])
local out, dead, bytes, after = {}, {}, 0, '(' .. ARGV[1]
while true do
  local entries = redis.call('ZRANGEBYSCORE', KEYS[1], after, '+inf', 'WITHSCORES', 'LIMIT', 0, want)
  if #entries == 0 then break end
  local keys = {}
  for i = 1, #entries, 2 do keys[#keys + 1] = ARGV[4] .. entries[i] end
  local texts = mget_all(keys)
  for i = 1, #keys do
    local text = texts[i]
    if text then
      out[#out + 1] = entries[2 * i - 1]
      out[#out + 1] = entries[2 * i]
      out[#out + 1] = text
      bytes = bytes + #text
      if #out == 3 * want or bytes >= max_bytes then break end
    else
      dead[#dead + 1] = entries[2 * i - 1]
    end
  end
  if #out == 3 * want or bytes >= max_bytes or #entries < 2 * want then break end
  after = '(' .. entries[#entries]
end
for first = 1, #dead, 1000 do
  redis.call('ZREM', KEYS[1], unpack(dead, first, math.min(first + 999, #dead)))
end
return out
`,
);

/**
 * Queues a stored message (its text still exists) for a user if, and only if, the user has no
 * connection anywhere; the queue stays capped and gets its TTL, as in APPEND.
 * KEYS: presence:count, queue:<user>, msg:<id>
 * ARGV: 1 userId, 2 position, 3 messageId, 4 maxEntries, 5 messageTtlMs
 * Returns 1 when queued.
 */
export const REQUEUE_IF_OFFLINE = script(
  "requeue_if_offline",
  3,
  INDEX,
  `
if tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') > 0 then return 0 end
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[3])
cap_index(KEYS[2], tonumber(ARGV[4]), ARGV[5])
return 1
`,
);

// -------------------------------------------------------------------------------------------
// Rate limiting

/**
 * Exact sliding window: a list of the times of the last allowed actions, oldest first, in
 * microseconds of Redis' own clock (TIME), so the nodes' clock skew does not matter. An action is
 * allowed unless the `limit`-th newest allowed action is less than `windowMs` old, which is
 * exactly when fewer than `limit` allowed actions are in the window; a refused action is not
 * recorded, and its retryAfter is when that `limit`-th newest leaves the window.
 *
 * Entries are pushed in time order (one clock, read inside the atomic script), so the newest
 * entries are the ones in the window, and the `limit`-th newest decides. Nothing older can ever
 * decide again, so it is dropped: the list is cut to `limit` entries when it grows past them and,
 * for large limits, entries out of the window are cut from its head whenever its length reaches
 * a multiple of 64 (each entry is read there once or twice), so it holds the actions of the
 * window and at most 64 more. The key expires one window after the last allowed action, when
 * every entry is out of the window. (Were Redis' clock stepped, the decision would be the sorted
 * set's of earlier versions: recorded times count until they are windowMs older than TIME.)
 *
 * Commands: TIME, LINDEX, then when allowed RPUSH, PEXPIRE (and LTRIM past the limit). The sorted
 * set it replaces cost ZREMRANGEBYSCORE, ZCARD, ZADD (which scans a small set, and needs a member
 * made unique by the caller) and PEXPIRE.
 * KEYS: rate-log:<key>
 * ARGV: limit, windowMs
 * Returns { 1 allowed / 0 refused, retryAfterMs }.
 */
export const CONSUME = script(
  "consume",
  1,
  RATE_WINDOW,
  `
local allowed, retry_after_ms = consume_rate(KEYS[1], ARGV[1], ARGV[2])
return { allowed, retry_after_ms }
`,
);

export const ALL_SCRIPTS: readonly LuaScript[] = [
  PRESENCE_BATCH,
  REASSERT,
  TICK,
  DROP_NODE,
  SNAPSHOT,
  APPEND,
  HISTORY,
  READ_INBOX,
  ACKNOWLEDGE,
  MARK_READ,
  CONVERSATIONS,
  READ_QUEUED,
  REQUEUE_IF_OFFLINE,
  CONSUME,
];
