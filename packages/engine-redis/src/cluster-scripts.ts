/**
 * The Lua of Redis Cluster mode (REDIS_CLUSTER_NODES). Every script here touches the keys of one
 * slot only (keys.ts: `{u:<user>}` and `{p}`), which is all Redis Cluster lets a script do. The
 * standalone scripts (scripts.ts) are reused where they already keep to one slot, in their
 * cluster variant (see clusterVariant): their user-channel and presence PUBLISHes become
 * SPUBLISHes, so an event goes to the one shard of its channel's slot instead of being copied to
 * every node of the cluster.
 *
 * ## A direct message across slots
 *
 * A conversation's keys (seq, history, pending set, read marks) are in the slot of its *owner*,
 * the first of its two users in conversationKey order (keys.ts), next to the owner's own keys:
 * so a DM touches two slots, the owner's and the other user's, and is two or three scripts
 * (messages in cluster-messages.ts), each idempotent, keyed by the message:
 *
 * 1. SEND_CHECK (sender's slot), only with a clientMsgId or behind the limits, and only when the
 *    sender is not the owner (otherwise it is part of step 2): the idempotency record answers a
 *    retry (it holds the original's id, timestamp and message head, so a retry finishes the
 *    original message, whatever it carries itself); else the rate window and the daily quotas
 *    count the message and the record is written.
 * 2. OWNER_STEP (owner's slot): unless the owner's marker (`done-in:` or `done-out:`) exists
 *    (then it answers from it and the stored text), takes the next seq, stores the text (the
 *    owner's copy, which the conversation's reads use too) and the history entry, adds the
 *    message to the conversation's `pending` set, and does the owner's side: inbox position and
 *    entry, conversation list, the event (to the recipient, or the copy to the sender's other
 *    connections) and the marker.
 * 3. RECIPIENT_STEP or SENDER_STEP (the other user's slot): the other side, likewise, unless its
 *    marker exists.
 * The node acks after the last step. The pending entry is then removed after the ack: by the
 * node's next OWNER_STEP in that conversation (it carries the ids along), or by a ZREM within a
 * second. A message whose steps stopped half-way (a node died, Redis failed over between them)
 * stays in `pending`; a later OWNER_STEP of the same conversation, on any node, hands out the
 * entries older than the repair delay (marking them taken for another delay), and the node runs
 * step 3 for them again: a done side answers its marker, a missing one is completed. So history
 * and inboxes agree again at the next message of the conversation.
 *
 * Delivered or queued: the recipient's side cannot read the presence keys (another slot). It
 * publishes first, and SPUBLISH answers how many subscribers got the event: a node subscribes
 * to a user's channel before registering the user's connection and unsubscribes after the last
 * one closed, so 0 means nobody holds the user, and the message is queued. That is decided
 * atomically with the store, like the standalone script's presence check.
 *
 * ## A group entry across slots
 *
 * The group's part is the standalone group scripts in their cluster mode (groups.ts); each
 * member's part is GROUP_MEMBER_STEP below, ordered by a per-member cursor (cluster-groups.ts,
 * docs/groups.md).
 */
import {
  ACK_INBOX,
  INDEX,
  LOG,
  type LuaScript,
  MESSAGE_TEXT,
  MGET_ALL,
  RATE_WINDOW,
  script,
} from "./scripts.js";

/** Cluster variants by the standalone script's SHA1 (the APPEND variants share one body). */
const variants = new Map<string, { readonly lua: string; readonly sha: string }>();

/**
 * The script as it runs on Redis Cluster: every PUBLISH becomes SPUBLISH (sharded pub/sub;
 * Redis ≥ 7.0). The standalone scripts' channels are all user channels or the presence
 * broadcast channel, which the cluster engine subscribes with SSUBSCRIBE. Text substitution
 * keeps one source for both modes (the presence scripts in particular).
 */
export function clusterVariant(standalone: LuaScript): LuaScript {
  let variant = variants.get(standalone.sha);
  if (variant === undefined) {
    const lua = standalone.lua.replaceAll("redis.call('PUBLISH',", "redis.call('SPUBLISH',");
    const { sha } = script(standalone.name, 0, lua);
    variant = { lua, sha };
    variants.set(standalone.sha, variant);
  }
  return variant.sha === standalone.sha
    ? standalone
    : { ...standalone, lua: variant.lua, sha: variant.sha };
}

const CHECK = `
-- A DM's idempotency record and limits, in the sender's slot (see SEND_CHECK). c = { convs,
-- idem (or nil), rate, quota (or nil: no limits), to, id, timestamp, head, idem_ttl, limit,
-- window, per_day, bytes_per_day, bytes }. Returns nil to go on, else the script's answer.
local function send_check(c)
  if c.idem then
    local earlier = redis.call('GET', c.idem)
    if earlier then return { 1, earlier } end
  end
  if c.quota then
    local starts = not redis.call('ZSCORE', c.convs, c.to)
    local bytes = tonumber(c.bytes)
    local time = redis.call('TIME')
    local seconds = tonumber(time[1])
    local today = math.floor(seconds / 86400)
    local day_left_ms = (today + 1) * 86400000 - seconds * 1000
      - math.floor(tonumber(time[2]) / 1000)
    local used = redis.call('HMGET', c.quota, 'day', 'conversations', 'bytes')
    if tonumber(used[1]) ~= today then used = nil end
    if starts and (used and tonumber(used[2]) or 0) + 1 > tonumber(c.per_day) then
      return { 3, day_left_ms }
    end
    if (used and tonumber(used[3]) or 0) + bytes > tonumber(c.bytes_per_day) then
      return { 4, day_left_ms }
    end
    local allowed, retry_after_ms = consume_rate(c.rate, c.limit, c.window)
    if allowed == 0 then return { 2, retry_after_ms } end
    if used then
      redis.call('HINCRBY', c.quota, 'bytes', bytes)
      if starts then redis.call('HINCRBY', c.quota, 'conversations', 1) end
    else
      redis.call('HSET', c.quota, 'day', string.format('%d', today),
        'conversations', starts and '1' or '0', 'bytes', string.format('%d', bytes))
      redis.call('PEXPIRE', c.quota, string.format('%d', day_left_ms))
    end
  end
  if c.idem then
    redis.call('SET', c.idem, c.id .. '|' .. c.timestamp .. '|' .. c.head, 'PX', c.idem_ttl)
  end
  return nil
end
`;

/**
 * Step 1 of a DM whose sender is not the conversation's owner: the sender's idempotency record
 * and limits.
 * KEYS: 1 convs:<from>, [2 idem:<from, clientMsgId>], [last two: rate-log:<from>, quota:<from>]
 * ARGV: 1 to, 2 id, 3 timestamp, 4 message head, 5 idempotency TTL (ms), 6 "1" with an idem
 *       key, 7 "1" behind the limits, 8 rate limit, 9 window (ms), 10 new conversations per
 *       day, 11 bytes per day, 12 the text's bytes
 * Returns { 0 } go on; { 1, record } a retry (record: `<id>|<timestamp>|<head>`);
 * { 2, retryAfterMs } rate-limited; { 3, ms } / { 4, ms } over a daily quota.
 *
 * A new conversation is one whose other user is not in the sender's conversation list (every
 * DM adds each user to the other's list): the seq may be in another slot. The list is capped
 * (maxEntries) and forgets a conversation whose last text expired, so a pair dropped from it
 * counts again. The bytes are those of the text with a one-digit seq (the seq is not known yet):
 * up to 15 bytes fewer than stored for long conversations.
 */
export const SEND_CHECK = script(
  "cluster_send_check",
  1,
  RATE_WINDOW,
  CHECK,
  `
local limited = ARGV[7] == '1'
local answer = send_check({
  convs = KEYS[1], idem = ARGV[6] == '1' and KEYS[2] or nil,
  rate = limited and KEYS[#KEYS - 1] or nil, quota = limited and KEYS[#KEYS] or nil,
  to = ARGV[1], id = ARGV[2], timestamp = ARGV[3], head = ARGV[4], idem_ttl = ARGV[5],
  limit = ARGV[8], window = ARGV[9], per_day = ARGV[10], bytes_per_day = ARGV[11],
  bytes = ARGV[12],
})
return answer or { 0 }
`,
);

/** Pushes a log entry, keeps the log to cap entries and renews its TTL. */
const LOG_PUSH = `
local function log_push(key, entry, cap, ttl)
  if redis.call('RPUSH', key, entry) > cap then
    redis.call('LTRIM', key, string.format('-%d', cap), '-1')
  end
  redis.call('PEXPIRE', key, ttl)
end
`;

const ADD_CONVERSATION = `${LOG_PUSH}
-- As in APPEND (scripts.ts): the conversation list, capped with its conv-last fields.
local function add_conversation(list_key, last_key, position, position_text, other, id, cap)
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
`;

/**
 * Step 2 of a DM, in the conversation owner's slot: seq, text, history, pending entry and the
 * owner's side (see the top of this file); idempotent per message (the owner's marker). With the
 * sender as the owner, the sender's check (CHECK) runs first, in the same script.
 * KEYS: 1 conv-seq:<c>, 2 conv-log:<c>, 3 pending:<c>, 4 inbox-pos:<owner>,
 *       5 inbox-log:<owner>, 6 msg:{u:owner}<id>, 7 convs:<owner>, 8 conv-last:<owner>,
 *       9 done-out:<owner, id> (owner sends) or done-in:<owner, id> (owner receives),
 *       10 queue:<owner>, 11 unread:<owner>, [12 idem:<owner, clientMsgId>],
 *       [last two: rate-log:<owner>, quota:<owner>]
 * ARGV: 1 id, 2 message head (encodeMessageWithoutSeq without its closing brace),
 *       3 messageTtlMs, 4 maxEntries, 5 repair delay (ms), 6 the owner's text head,
 *       7 'out' (the owner sends) or 'in', 8 the other user, 9 the owner's channel,
 *       10 the sending connection (out), 11 marker TTL (ms), 12 "1" with an idem key,
 *       13 "1" behind the limits, 14 timestamp, 15 idempotency TTL, 16 rate limit,
 *       17 window (ms), 18 new conversations per day, 19 bytes per day, 20 the text's bytes,
 *       21… ids of earlier DMs of the conversation now done on both sides (leave `pending`)
 * Returns SEND_CHECK's answers for a retry or a refusal, else
 * { 0, seq, text, owner's position, 1 delivered / 0 queued (in), 1 if it was already done,
 *   id, text, ... (DMs to repair) }.
 */
export const OWNER_STEP = script(
  "cluster_owner_step",
  11,
  RATE_WINDOW,
  CHECK,
  INDEX,
  ADD_CONVERSATION,
  MGET_ALL,
  MESSAGE_TEXT,
  `
local id, ttl, cap = ARGV[1], ARGV[3], tonumber(ARGV[4])
local idem = ARGV[12] == '1' and KEYS[12] or nil
if idem or ARGV[13] == '1' then
  local limited = ARGV[13] == '1'
  local answer = send_check({
    convs = KEYS[7], idem = idem,
    rate = limited and KEYS[#KEYS - 1] or nil, quota = limited and KEYS[#KEYS] or nil,
    to = ARGV[8], id = id, timestamp = ARGV[14], head = ARGV[2], idem_ttl = ARGV[15],
    limit = ARGV[16], window = ARGV[17], per_day = ARGV[18], bytes_per_day = ARGV[19],
    bytes = ARGV[20],
  })
  if answer then return answer end
end
if #ARGV > 20 then redis.call('ZREM', KEYS[3], unpack(ARGV, 21)) end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local now_text = string.format('%d', now)
local out
local done = redis.call('GET', KEYS[9])
if done then
  local position, delivered = string.match(done, '^(%d+)|(%d+)$')
  local text = redis.call('GET', KEYS[6]) or ''
  out = { 0, seq_of(text) or 0, text, tonumber(position), tonumber(delivered), 1 }
else
  local seq = redis.call('INCR', KEYS[1])
  local seq_text = string.format('%d', seq)
  local json = ARGV[2] .. ',"seq":' .. seq_text .. '}'
  redis.call('SET', KEYS[6], json, 'PX', ttl)
  log_push(KEYS[2], seq_text .. '|' .. id, cap, ttl)
  redis.call('ZADD', KEYS[3], now_text, id)
  redis.call('PEXPIRE', KEYS[3], ttl)
  local position = redis.call('INCR', KEYS[4])
  local position_text = string.format('%d', position)
  log_push(KEYS[5], position_text .. '|' .. id, cap, ttl)
  add_conversation(KEYS[7], KEYS[8], position, position_text, ARGV[8], id, cap)
  -- Event payload, see codec.ts: m|<position>|<excludeConnId>|<messageId>|<messageJson>
  local delivered = 0
  if ARGV[7] == 'in' then
    redis.call('HINCRBY', KEYS[11], ARGV[8], '1')
    if redis.call('SPUBLISH', ARGV[9], 'm|' .. position_text .. '||' .. id .. '|' .. json) > 0 then
      delivered = 1
    else
      redis.call('ZADD', KEYS[10], position_text, id)
      cap_index(KEYS[10], cap, ttl, position)
    end
  else
    redis.call('SPUBLISH', ARGV[9],
      'm|' .. position_text .. '|' .. ARGV[10] .. '|' .. id .. '|' .. json)
  end
  redis.call('SET', KEYS[9], position_text .. '|' .. delivered, 'PX', ARGV[11])
  out = { 0, seq, json, position, delivered, 0 }
end
local stale = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf',
  string.format('%d', now - tonumber(ARGV[5])), 'LIMIT', 0, 16)
if #stale > 0 then
  local keys = {}
  for i = 1, #stale do keys[i] = ARGV[6] .. stale[i] end
  local texts = mget_all(keys)
  for i = 1, #stale do
    if texts[i] then
      -- Taken: another node's OWNER_STEP hands it out again only after another delay.
      redis.call('ZADD', KEYS[3], now_text, stale[i])
      out[#out + 1] = stale[i]
      out[#out + 1] = texts[i]
    else
      redis.call('ZREM', KEYS[3], stale[i])
    end
  end
end
return out
`,
);

/**
 * Step 3 of a DM whose recipient is not the conversation's owner: the recipient's side;
 * idempotent per message (marker `done-in:`).
 * KEYS: 1 inbox-pos:<to>, 2 inbox-log:<to>, 3 msg:{u:to}<id>, 4 queue:<to>, 5 convs:<to>,
 *       6 conv-last:<to>, 7 unread:<to>, 8 done-in:<to, id>
 * ARGV: 1 id, 2 from, 3 text, 4 recipient channel, 5 messageTtlMs, 6 maxEntries,
 *       7 marker TTL (ms)
 * Returns { position, 1 delivered / 0 queued, 1 if it was already done else 0 }.
 */
export const RECIPIENT_STEP = script(
  "cluster_recipient_step",
  8,
  INDEX,
  ADD_CONVERSATION,
  `
local done = redis.call('GET', KEYS[8])
if done then
  local position, delivered = string.match(done, '^(%d+)|(%d+)$')
  return { tonumber(position), tonumber(delivered), 1 }
end
local id, ttl, cap = ARGV[1], ARGV[5], tonumber(ARGV[6])
local position = redis.call('INCR', KEYS[1])
local position_text = string.format('%d', position)
redis.call('SET', KEYS[3], ARGV[3], 'PX', ttl)
log_push(KEYS[2], position_text .. '|' .. id, cap, ttl)
add_conversation(KEYS[5], KEYS[6], position, position_text, ARGV[2], id, cap)
redis.call('HINCRBY', KEYS[7], ARGV[2], '1')
-- Event payload, see codec.ts: m|<position>|<excludeConnId>|<messageId>|<messageJson>
local delivered = 0
if redis.call('SPUBLISH', ARGV[4], 'm|' .. position_text .. '||' .. id .. '|' .. ARGV[3]) > 0 then
  delivered = 1
else
  redis.call('ZADD', KEYS[4], position_text, id)
  cap_index(KEYS[4], cap, ttl, position)
end
redis.call('SET', KEYS[8], position_text .. '|' .. delivered, 'PX', ARGV[7])
return { position, delivered, 0 }
`,
);

/**
 * Step 3 of a DM whose sender is not the conversation's owner: the sender's side; idempotent per
 * message (marker `done-out:`). The copy to
 * the sender's other connections is published whenever the step runs (this slot cannot see
 * presence): the sending node gets it too, and drops it (the sending connection is excluded).
 * KEYS: 1 inbox-pos:<from>, 2 inbox-log:<from>, 3 msg:{u:from}<id>, 4 convs:<from>,
 *       5 conv-last:<from>, 6 done-out:<from, id>
 * ARGV: 1 id, 2 to, 3 text, 4 sender channel, 5 sender connection id, 6 messageTtlMs,
 *       7 maxEntries, 8 marker TTL (ms)
 * Returns { position, 1 if it was already done else 0 }.
 */
export const SENDER_STEP = script(
  "cluster_sender_step",
  6,
  INDEX,
  ADD_CONVERSATION,
  `
local done = redis.call('GET', KEYS[6])
if done then return { tonumber(done), 1 } end
local id, ttl, cap = ARGV[1], ARGV[6], tonumber(ARGV[7])
local position = redis.call('INCR', KEYS[1])
local position_text = string.format('%d', position)
redis.call('SET', KEYS[3], ARGV[3], 'PX', ttl)
log_push(KEYS[2], position_text .. '|' .. id, cap, ttl)
add_conversation(KEYS[4], KEYS[5], position, position_text, ARGV[2], id, cap)
redis.call('SPUBLISH', ARGV[4], 'm|' .. position_text .. '|' .. ARGV[5] .. '|' .. id .. '|' .. ARGV[3])
redis.call('SET', KEYS[6], position_text, 'PX', ARGV[8])
return { position, 0 }
`,
);

/**
 * ACKNOWLEDGE (scripts.ts) in the user's slot: raises the acked and delivered watermarks, and
 * answers the receipts to send instead of writing them (they go to the senders' slots, RECEIPT).
 * KEYS: inbox-log:<user>, inbox-pos:<user>, acked:<user>, delivered:<user>
 * ARGV: 1 upTo (integer), 2 the user's JSON literal, 3 the user's text head
 * Returns { sender, seq, sender, seq, ... }.
 */
export const ACKNOWLEDGE_CLUSTER = script(
  "cluster_acknowledge",
  4,
  MGET_ALL,
  LOG,
  MESSAGE_TEXT,
  ACK_INBOX,
  `
local out = {}
ack_inbox(KEYS, tonumber(ARGV[1]), ARGV[2], ARGV[3], function(other, seq)
  out[#out + 1] = other
  out[#out + 1] = string.format('%d', seq)
end)
return out
`,
);

/**
 * A receipt for a user, in that user's slot: stored for sync and published.
 * KEYS: receipts:<user>
 * ARGV: 1 field (`<kind>|<from>`), 2 frame, 3 the user's channel
 */
export const RECEIPT = script(
  "cluster_receipt",
  1,
  `
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SPUBLISH', ARGV[3], 'f|' .. ARGV[2])
return 1
`,
);

/**
 * MARK_READ's first half, in the conversation's slot: the read watermark (kept there, per user,
 * in `read-marks`) and the recount of unread messages from the other user above it.
 * KEYS: conv-seq:<c>, conv-log:<c>, read-marks:<c>
 * ARGV: 1 user, 2 upTo (integer), 3 other's JSON literal, 4 the conversation's text head
 * Returns { 0 } when the mark did not rise, else { 1, mark, unread }.
 */
export const MARK_READ_CONV = script(
  "cluster_mark_read",
  3,
  MGET_ALL,
  LOG,
  MESSAGE_TEXT,
  `
local last = redis.call('GET', KEYS[1])
if not last then return { 0 } end
local up_to = math.min(tonumber(ARGV[2]), tonumber(last))
if up_to <= tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0') then return { 0 } end
redis.call('HSET', KEYS[3], ARGV[1], string.format('%d', up_to))
local unread = 0
local from = log_seek(KEYS[2], redis.call('LLEN', KEYS[2]), up_to)
log_walk_up(KEYS[2], from, ARGV[4], 256, function(_, _, text)
  if sender_literal(text) == ARGV[3] then unread = unread + 1 end
  return false
end)
return { 1, up_to, unread }
`,
);

/**
 * MARK_READ's second half, in the reader's slot: the unread count for the other user, unless a
 * later mark-read already wrote one (the `read` hash keeps the mark each count belongs to).
 * KEYS: read:<user>, unread:<user>
 * ARGV: 1 other, 2 mark, 3 unread
 */
export const SET_UNREAD = script(
  "cluster_set_unread",
  2,
  `
if tonumber(ARGV[2]) <= tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if tonumber(ARGV[3]) > 0 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
else
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return 1
`,
);

/**
 * REQUEUE_IF_OFFLINE without the presence check (another slot: the node checks first).
 * KEYS: queue:<user>, msg:{u:user}<id>
 * ARGV: 1 position, 2 messageId, 3 maxEntries, 4 messageTtlMs
 */
export const REQUEUE_CLUSTER = script(
  "cluster_requeue",
  2,
  INDEX,
  `
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('ZADD', KEYS[1], 'NX', ARGV[1], ARGV[2])
cap_index(KEYS[1], tonumber(ARGV[3]), ARGV[4])
return 1
`,
);

/**
 * A group entry's step in one member's slot (cluster-groups.ts): appends entries of the group's
 * log to the member's inbox in seq order, each exactly once. The member's cursor for the group
 * (`group-cursor` hash: group id → the last seq in the member's inbox) makes the step idempotent
 * and keeps the order: an entry goes in only right after its predecessor, so when concurrent
 * senders' steps arrive out of order, the later entry's step finds a gap and the node fills it
 * from the group's log first (GROUP_LOG_RANGE). Entries before the member's join are not its own:
 * the cursor counts from the join (join seq - 1) at the latest.
 * The given entries are every live entry of the log with a seq in [from, to] (an expired or
 * trimmed one is missing, and skipped); the last one, at seq `to`, is the step's own entry.
 * Per entry: inbox position, the member's text copy, inbox entry, then SPUBLISH on the member's
 * channel (as RECIPIENT_STEP: 0 subscribers means no node holds the member, so it is queued);
 * an entry of the member's own (its message or its membership change) is published for its
 * other connections, never queued, and its position kept in the `done-out:` marker (a retry's
 * ack); a `created`/`joined` entry of the member adds the group to its `groups` hash, its
 * `removed`/`left` one removes it.
 * KEYS: 1 inbox-pos:<m>, 2 inbox-log:<m>, 3 queue:<m>, 4 group-cursor:<m>, 5 groups:<m>
 * ARGV: 1 group id, 2 the member's join seq, 3 from, 4 to, 5 messageTtlMs, 6 maxEntries,
 *       7 the member's text head, 8 its channel, 9 its `done-out:` head, 10 marker TTL (ms),
 *       then five per entry: seq, id, text, connection to exclude (or ''), flags ('o' its own,
 *       'n' its own and no copy wanted: the sending connection is its only one, '+' it joins,
 *       '-' it leaves)
 * Returns { 0, position of the entry at `to` (0 when it is missing), 1 if an entry not its own
 * reached a node that holds the member }, { 1, position (its own entry's, from
 * the marker, else 0), 0 } when the member already has the entry, or { -1, cursor } for a gap:
 * call again with the entries after the cursor.
 */
export const GROUP_MEMBER_STEP = script(
  "cluster_group_member_step",
  5,
  INDEX,
  LOG_PUSH,
  `
local gid = ARGV[1]
local cursor = math.max(tonumber(redis.call('HGET', KEYS[4], gid) or '0'), tonumber(ARGV[2]) - 1)
local from, to = tonumber(ARGV[3]), tonumber(ARGV[4])
if cursor >= to then
  return { 1, tonumber(redis.call('GET', ARGV[9] .. ARGV[#ARGV - 3]) or '0'), 0 }
end
if cursor + 1 < from then return { -1, cursor } end
local ttl, cap = ARGV[5], tonumber(ARGV[6])
local position, delivered = 0, 0
-- Event payload, see codec.ts: g|<position>|<exclude>|<id>|<group id bytes>|<group id><text>
local group_tail = '|' .. string.format('%d', #gid) .. '|' .. gid
for i = 11, #ARGV, 5 do
  local seq = tonumber(ARGV[i])
  if seq > cursor and seq <= to then
    local id, text, flags = ARGV[i + 1], ARGV[i + 2], ARGV[i + 4]
    local pos = redis.call('INCR', KEYS[1])
    local pt = string.format('%d', pos)
    redis.call('SET', ARGV[7] .. id, text, 'PX', ttl)
    log_push(KEYS[2], pt .. '|' .. id, cap, ttl)
    local payload = 'g|' .. pt .. '|' .. ARGV[i + 3] .. '|' .. id .. group_tail .. text
    if string.find(flags, 'o', 1, true) then
      if not string.find(flags, 'n', 1, true) then redis.call('SPUBLISH', ARGV[8], payload) end
      redis.call('SET', ARGV[9] .. id, pt, 'PX', ARGV[10])
    elseif redis.call('SPUBLISH', ARGV[8], payload) > 0 then
      delivered = 1
    else
      redis.call('ZADD', KEYS[3], pt, id)
      cap_index(KEYS[3], cap, ttl, pos)
    end
    if string.find(flags, '+', 1, true) then
      redis.call('HSET', KEYS[5], gid, '1')
    elseif string.find(flags, '-', 1, true) then
      redis.call('HDEL', KEYS[5], gid)
    end
    if seq == to then position = pos end
  end
end
redis.call('HSET', KEYS[4], gid, string.format('%d', to))
return { 0, position, delivered }
`,
);

/**
 * The entries of a group's log with a seq in (after, upTo], with their texts, for a member
 * step's gap (GROUP_MEMBER_STEP); in the group's slot.
 * KEYS: group-log:<g>
 * ARGV: 1 after, 2 upTo (> after), 3 the group's text head
 * Returns { seq, id, text, ... } in seq order (entries whose text expired left out).
 */
export const GROUP_LOG_RANGE = script(
  "cluster_group_log_range",
  1,
  MGET_ALL,
  LOG,
  `
local after, up_to = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
local from = log_seek(KEYS[1], redis.call('LLEN', KEYS[1]), after)
log_walk_up(KEYS[1], from, ARGV[3], math.min(up_to - after, 256), function(id, seq, text)
  if tonumber(seq) > up_to then return true end
  out[#out + 1] = seq
  out[#out + 1] = id
  out[#out + 1] = text
  return false
end)
return out
`,
);

/**
 * Whether a user may join one more group, in the user's slot (Redis Cluster: the group's step
 * cannot read the user's `groups` hash). Not atomic with the join: concurrent joins may pass it
 * together (see docs/groups.md).
 * KEYS: groups:<user>
 * ARGV: 1 group id, 2 maxGroupsPerUser
 * Returns 1 when the user is in the group already or below the limit, else 0.
 */
export const GROUP_COUNT_CHECK = script(
  "cluster_group_count_check",
  1,
  `
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('HLEN', KEYS[1]) < tonumber(ARGV[2]) then return 1 end
return 0
`,
);

export const CLUSTER_SCRIPTS: readonly LuaScript[] = [
  GROUP_MEMBER_STEP,
  GROUP_LOG_RANGE,
  GROUP_COUNT_CHECK,
  SEND_CHECK,
  OWNER_STEP,
  RECIPIENT_STEP,
  SENDER_STEP,
  ACKNOWLEDGE_CLUSTER,
  RECEIPT,
  MARK_READ_CONV,
  SET_UNREAD,
  REQUEUE_CLUSTER,
];
