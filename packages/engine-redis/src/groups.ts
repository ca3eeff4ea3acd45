/**
 * GroupStore on a standalone Redis. A group's own keys share the hash tag `{g:<groupId>}`
 * (keys.ts), so that they are one slot; an entry (message or membership event) is stored once
 * (`msg:<id>`, as a direct message's text) and referenced from the group's log and from each
 * member's inbox log (fan-out on write of references, docs/groups.md), so replay, acks, queues
 * and retention are the direct messages' own.
 *
 * Every write of a group of at most chunkAbove (256) members is one script (one round trip): it
 * checks membership and limits, numbers the entry, stores it and writes it to the inbox of each
 * member of that moment, queues it for the members offline and publishes it to those online,
 * atomically: a message racing a removal is before it (and reaches the removed member) or after
 * it (and does not).
 *
 * A larger group's entry would make that script long (6 ms for 1,000 members, and Redis serves
 * nobody meanwhile), so it is fanned out in chunks (docs/groups.md): the numbering script puts
 * it in the group's fan-out queue with a snapshot of its recipients, the members at its seq
 * (membership is still decided atomically with the seq), and GROUP_FAN_OUT writes the queue's
 * entries into the inboxes, at most chunkMembers (125) members per script, in seq order. The
 * numbering script runs the first chunk, the sender first, and the sender's node acks after it
 * (stored in the log, the sender's inbox and the queue: delivery follows, as a DM's ack
 * promises), then runs the other chunks in the background (drive); any node may run them, so a
 * retry, the group's next entry or another node's heartbeat (finishFanOuts) finishes what a
 * node that died after its ack left.
 *
 * Cost of a message to a group of n members: about 12 + 3n commands (per member: INCR, RPUSH,
 * PEXPIRE, and ZADD + PEXPIRE when offline), one PUBLISH per node holding members (its node
 * channel, naming them: codec.ts), one text of the message, and n inbox references of about 45
 * bytes; in one script up to 256 members. Above, ⌈n / 125⌉ scripts (round trips, in sequence),
 * of which the ack waits for the first: per chunk about 16 commands, 3 per member (and 2 per
 * offline one), one PUBLISH per node holding members of the chunk; the numbering script, which
 * runs the first chunk, about 17 more and the snapshot (an RPUSH of n members). Measured here
 * (1,000 members online on two nodes): a chunk of 125 has a median of 0.7 ms, the numbering
 * script with its chunk 1 ms, where the single script took 3.9 to 6 ms.
 *
 * Redis Cluster: the per-member inbox writes touch n users' slots, which one script cannot. The
 * same scripts run in a cluster mode (LIB's CLUSTER: the node passes no per-user key heads):
 * they do the group's part only, in its slot, and answer the entry with its recipients; the
 * node then runs each recipient's step in its slot (cluster-groups.ts). What else crosses slots
 * is done by the node too: the rate window and the group limit of a joining user (checked
 * first, in the user's slot), read receipts and typing frames (per member, after the group's
 * script), conversations() (a script per group).
 */
import {
  type Broker,
  type ConversationSummary,
  EngineUnavailableError,
  type GroupAppendInput,
  type GroupAppendResult,
  type GroupChange,
  type GroupLimits,
  GroupRefusedError,
  type GroupState,
  type GroupStore,
  type HistoryPage,
  IDEMPOTENCY_TTL_MS,
  type RateLimitOptions,
  type RateRefusal,
  type RetentionOptions,
} from "@mrezhen/engine";
import { type GroupEvent, groupMessageWithoutSeq, groupReceiptFrame } from "@mrezhen/protocol";
import { ClusterGroupSteps, type StoredEntry } from "./cluster-groups.js";
import type { Keys } from "./keys.js";
import type { RedisMessageStore } from "./messages.js";
import {
  integers,
  type RedisClient,
  runScript,
  type ScriptArgument,
  strings,
  toEngineError,
} from "./script-runner.js";
import { HASH_VALUES, HMGET_ALL, INDEX, RATE_WINDOW, script } from "./scripts.js";

/**
 * Unread counts without a write per member per message. The group counts its messages (field
 * `messages` of the group hash); each member has a base in `group-unread`: the messages it is
 * not to count, raised by one for each message of its own, set to the count at its join and,
 * by mark_read, to the count minus the messages from others above its mark. A member's unread
 * count is then the group's count minus its base: two writes per message whatever the size of
 * the group, where a counter per member cost one per member (1,000 for a full group).
 */
const UNREAD_COUNTS = `
local function unread_of(messages, base)
  return math.max(0, tonumber(messages or '0') - tonumber(base or '0'))
end

-- The base that leaves a member with unread messages unread.
local function unread_base(group_key, unread)
  return tonumber(redis.call('HGET', group_key, 'messages') or '0') - unread
end
`;

const LIB = `${INDEX}${HMGET_ALL}${HASH_VALUES}${UNREAD_COUNTS}
local gid, ttl, cap = ARGV[1], ARGV[2], tonumber(ARGV[3])
local POS, LOG, QUEUE, MSG, COUNT, UGROUPS = ARGV[4], ARGV[5], ARGV[6], ARGV[8], ARGV[9], ARGV[10]
-- Standalone only, a line each: live delivery (the node set, the head of the nodes' presence
-- hashes), the chunked fan-out of large groups (the group's fan-out queue, the heads of an
-- entry's remaining recipients and of its state, the size above which a group's entries go
-- through the queue, the members per chunk, how long a finished entry's state is kept (ms), the
-- set of groups with a non-empty queue: see enqueue_fan_out), then the head of the nodes'
-- channels.
local NODES, NODE_COUNT, FANOUT, FANOUT_TO, FANOUT_ENTRY, CHUNK_ABOVE, CHUNK_MEMBERS, FANOUT_TTL,
  PENDING, NODE_CHAN = string.match(ARGV[7], '^' .. string.rep('([^\\n]*)\\n', 9) .. '(.*)$')
CHUNK_ABOVE, CHUNK_MEMBERS = tonumber(CHUNK_ABOVE), tonumber(CHUNK_MEMBERS)
local MAX_MEMBERS, MAX_GROUPS = tonumber(ARGV[11]), tonumber(ARGV[12])
local G, MEMBERS, GLOG, FORMER, UNREAD, READS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
-- Redis Cluster: the node passes no per-user key heads (those keys are in other slots), and
-- runs the members' side of an entry itself (cluster-groups.ts). A script then writes only the
-- group's keys, and answers { its answer, entry } (see answer()).
local CLUSTER = POS == ''
-- Cluster mode: the entry stored by this script, for the node: { text, member, join seq, ... }.
local entry
-- Standalone: 1 when this script queued an entry for chunked fan-out and the group's queue
-- still holds entries after its first chunk: the node goes on driving it (after its answer).
local fan_out_left = 0

-- Members in join order (by the seq of their join, then id), for the group's state.
local function members_list()
  local flat = redis.call('HGETALL', MEMBERS)
  local list = {}
  for i = 1, #flat, 2 do list[#list + 1] = { flat[i], tonumber(flat[i + 1]) } end
  table.sort(list, function(a, b)
    if a[2] ~= b[2] then return a[2] < b[2] end
    return a[1] < b[1]
  end)
  local names = {}
  for i = 1, #list do names[i] = list[i][1] end
  return names
end

-- Cluster mode: records the entry (its text) and its recipients with the seq of their join,
-- which their steps need (a member's stream starts at its join).
local function record_entry(json, recipients)
  local joins = hash_values(MEMBERS, recipients)
  entry = { json }
  for i = 1, #recipients do
    entry[#entry + 1] = recipients[i]
    entry[#entry + 1] = joins[i] or '0'
  end
end

-- A script's reply: in cluster mode with the entry it stored (or a retry found), if any.
local function answer(out)
  if CLUSTER and entry then return { out, entry } end
  return out
end

-- Live delivery on a standalone Redis: to each node holding connections of any of users (its
-- presence hash counts them), one PUBLISH naming those it holds: head, their count, mid, their
-- lines (lines[i] is users[i]'s), tail (codec.ts, node channels). One publish per node that
-- holds members, none per member, none to a node that holds none.
local function publish_to_nodes(users, lines, head, mid, tail)
  if #users == 0 then return end
  for _, node in ipairs(redis.call('SMEMBERS', NODES)) do
    local counts = hash_values(NODE_COUNT .. node, users)
    local held, k = {}, 0
    for i = 1, #users do
      if counts[i] then
        k = k + 1
        held[k] = lines[i]
      end
    end
    if k > 0 then
      redis.call('PUBLISH', NODE_CHAN .. node,
        head .. string.format('%d', k) .. mid .. table.concat(held) .. tail)
    end
  end
end

-- A frame to users (typing, receipts), through publish_to_nodes.
local function publish_frame(users, frame)
  local lines = {}
  for i = 1, #users do lines[i] = users[i] .. '\\n' end
  publish_to_nodes(users, lines, 'F|', '\\n', frame)
end

-- Writes an entry into the inboxes of recipients: per member INCR (its position), RPUSH +
-- PEXPIRE (its inbox log), then queued (ZADD) when it has no connection, else named in its
-- node's publish (the sender's sending connection, exclude, gets an ack instead of a copy).
-- Presence is read in the same atomic step as the write, as for a DM. json false (its text
-- expired before a late chunk): references only, no publish. Returns the sender's position (0
-- when it is not among recipients) and 1 when another recipient had a connection.
local function write_inboxes(id, json, from, recipients, exclude)
  local counts = hash_values(COUNT, recipients)
  local sender_position, any = 0, 0
  local online, lines = {}, {}
  for i = 1, #recipients do
    local m = recipients[i]
    local pos = redis.call('INCR', POS .. m)
    local pt = string.format('%d', pos)
    local log = LOG .. m
    if redis.call('RPUSH', log, pt .. '|' .. id) > cap then
      redis.call('LTRIM', log, '-' .. ARGV[3], '-1')
    end
    redis.call('PEXPIRE', log, ttl)
    local c = tonumber(counts[i] or '0')
    if m == from then
      sender_position = pos
      if c > (exclude == '' and 0 or 1) then
        online[#online + 1] = m
        lines[#lines + 1] = (exclude == '' and pt or pt .. '|' .. exclude) .. '\\n' .. m .. '\\n'
      end
    elseif c > 0 then
      any = 1
      online[#online + 1] = m
      lines[#lines + 1] = pt .. '\\n' .. m .. '\\n'
    else
      redis.call('ZADD', QUEUE .. m, pt, id)
      cap_index(QUEUE .. m, cap, ttl, pos)
    end
  end
  if json then publish_to_nodes(online, lines, 'G|' .. id .. '|', '|' .. gid .. '\\n', json) end
  return sender_position, any
end

-- Chunked fan-out (standalone Redis, groups of more than CHUNK_ABOVE members): instead of
-- writing every inbox here, the entry joins the group's fan-out queue (FANOUT, seqs in seq
-- order) with a snapshot of its recipients, the members at this seq (FANOUT_TO .. seq, a list,
-- the sender first so that its position is known after the first chunk), and its state
-- (FANOUT_ENTRY .. seq: id, sender, exclude, the idempotency record to complete, then the
-- sender's position and whether another recipient was online). GROUP_FAN_OUT writes the
-- queue's entries into the inboxes from its head, a bounded number of members per script,
-- so that no script runs long (docs/groups.md). The snapshot keeps membership decided here,
-- atomically with the seq, whatever changes before the last chunk.
local function enqueue_fan_out(seq_text, id, from, recipients, exclude, idem)
  local to = FANOUT_TO .. seq_text
  local others = {}
  local sender = false
  for i = 1, #recipients do
    if recipients[i] == from then sender = true else others[#others + 1] = recipients[i] end
  end
  if sender then redis.call('RPUSH', to, from) end
  for first = 1, #others, 1000 do
    redis.call('RPUSH', to, unpack(others, first, math.min(first + 999, #others)))
  end
  redis.call('HSET', FANOUT_ENTRY .. seq_text, 'id', id, 'from', from, 'exclude', exclude,
    'idem', idem, 'position', '0', 'any', '0')
  -- The group is listed while its queue holds entries: every node's heartbeat helps finish it
  -- (finishFanOuts), so that what a dead node left does not wait for the group's next entry.
  if redis.call('RPUSH', FANOUT, seq_text) == 1 then redis.call('SADD', PENDING, gid) end
end

-- Writes the fan-out queue's entries into their recipients' inboxes from its head, in seq
-- order, at most budget members (a chunk: it bounds the script's time), entry after entry while
-- the budget lasts. Each member's inbox write, presence check and node publish are one atomic
-- step, as in store(); the remaining recipients are popped as they are written, so the cursor
-- is the list itself, and any node may run this at any time, concurrently with others: each
-- member gets each entry once, and an entry only after every earlier one (the head is finished
-- before the next entry starts). A finished entry leaves the queue, completes its idempotency
-- record (the retry's answer) and keeps its state FANOUT_TTL ms for the sender's node to read.
-- Returns the queue's head seq after it (false when empty).
local function fan_out(budget)
  while budget > 0 do
    local seq_text = redis.call('LINDEX', FANOUT, 0)
    if not seq_text then
      redis.call('SREM', PENDING, gid)
      return false
    end
    local state, to = FANOUT_ENTRY .. seq_text, FANOUT_TO .. seq_text
    local chunk = redis.call('LPOP', to, budget)
    if chunk then
      budget = budget - #chunk
      local e = redis.call('HMGET', state, 'id', 'from', 'exclude')
      -- (A state lost while queued, evicted by a maxmemory policy, would block the group's
      -- queue for good: its remaining recipients are dropped instead.)
      if e[1] then
        local position, any = write_inboxes(e[1], redis.call('GET', MSG .. e[1]), e[2], chunk, e[3])
        if position > 0 then redis.call('HSET', state, 'position', string.format('%d', position)) end
        if any == 1 then redis.call('HSET', state, 'any', '1') end
      else
        redis.call('DEL', to)
      end
    end
    -- Recipients left: the budget is spent, the next chunk goes on from here.
    if redis.call('EXISTS', to) == 1 then return seq_text end
    redis.call('LPOP', FANOUT)
    local done = redis.call('HMGET', state, 'idem', 'position', 'any')
    if done[1] and done[1] ~= '' then
      -- The idempotency record was written with position 0 (pending): a retry now gets the
      -- original's answer at once. (Not written yet when this is the script that numbered the
      -- entry: it then writes the record with the position itself.)
      local record = redis.call('GET', done[1])
      local seq, rest = string.match(record or '', '^(%d+)|%d+|%d+|(.*)$')
      if seq then
        redis.call('SET', done[1], seq .. '|' .. done[3] .. '|' .. done[2] .. '|' .. rest, 'KEEPTTL')
      end
    end
    redis.call('PEXPIRE', state, FANOUT_TTL)
  end
  local head = redis.call('LINDEX', FANOUT, 0)
  if not head then redis.call('SREM', PENDING, gid) end
  return head
end

-- Whether the entry of seq target is in every inbox (1 when the queue's head, as fan_out
-- answers it, is past it, else 0), with its sender's position once the sender's inbox has it
-- (it is first in the snapshot; 0 while not, or once the state expired: positions are never
-- 0) and 1 when another recipient written so far was online: { done, position, any }.
local function fanned_out(target, head)
  local result = redis.call('HMGET', FANOUT_ENTRY .. string.format('%d', target), 'position', 'any')
  local done = (head and tonumber(head) <= target) and 0 or 1
  return { done, tonumber(result[1] or '0'), tonumber(result[2] or '0') }
end

-- Numbers an entry, stores its text and log entry, and writes it to each recipient's inbox:
-- queued for those with no connection, published to the others (the sender's sending
-- connection, exclude, gets an ack instead). Returns seq, the sender's position, and 1 when
-- another recipient had a connection. A large group's entry (or any entry while the group's
-- fan-out queue holds some: they go in seq order) is queued instead, and this script writes
-- only the queue's first chunk, which has the sender (first in the snapshot) unless earlier
-- entries fill it; the position answered is 0 (not known yet) when it does not, and
-- GROUP_FAN_OUT writes the rest (fan_out_left: some is left). idem: the key of the idempotency
-- record that GROUP_FAN_OUT completes when the entry is through ('' without one). Cluster mode:
-- only the group's part (seq, text, log, message counts); the recipients' inboxes are the
-- node's steps.
local function store(id, head, from, recipients, exclude, is_message, idem)
  local seq = redis.call('HINCRBY', G, 'seq', 1)
  local seq_text = string.format('%d', seq)
  local json = head .. ',"seq":' .. seq_text .. '}'
  redis.call('SET', MSG .. id, json, 'PX', ttl)
  if redis.call('RPUSH', GLOG, seq_text .. '|' .. id) > cap then
    redis.call('LTRIM', GLOG, '-' .. ARGV[3], '-1')
  end
  redis.call('PEXPIRE', GLOG, ttl)
  if is_message then
    -- Unread counts in O(1) per message (see unread_of): a member's own message raises its base.
    redis.call('HINCRBY', G, 'messages', 1)
    redis.call('HINCRBY', UNREAD, from, 1)
  end
  if CLUSTER then
    record_entry(json, recipients)
    return seq, 0, 0
  end
  if #recipients > CHUNK_ABOVE or redis.call('EXISTS', FANOUT) == 1 then
    enqueue_fan_out(seq_text, id, from, recipients, exclude, idem)
    -- The first chunk here (one round trip fewer): of this entry, or of those before it.
    local head = fan_out(CHUNK_MEMBERS)
    if head then fan_out_left = 1 end
    local done = fanned_out(seq, head)
    return seq, done[2], done[3]
  end
  local sender_position, any = write_inboxes(id, json, from, recipients, exclude)
  return seq, sender_position, any
end
`;

/** Group keys (KEYS 1-6, see keys.ts) then the LIB arguments, then each script's own. */
const GROUP_CREATE = script(
  "group_create",
  6,
  LIB,
  `
-- ARGV 13 createdBy, 14 name, 15 createdAt, 16 event id, 17 event head, 18.. members
if redis.call('EXISTS', G) == 1 then return { -1 } end
local members = {}
for i = 18, #ARGV do members[#members + 1] = ARGV[i] end
if #members > MAX_MEMBERS then return { -3 } end
-- (Cluster mode: the node checked the members' group counts, in their slots.)
for i = 1, #members do
  if not CLUSTER and redis.call('HLEN', UGROUPS .. members[i]) >= MAX_GROUPS then
    return { -4, members[i] }
  end
end
redis.call('HSET', G, 'name', ARGV[14], 'createdBy', ARGV[13], 'createdAt', ARGV[15], 'seq', '0')
for i = 1, #members do
  redis.call('HSET', MEMBERS, members[i], '1')
  if not CLUSTER then redis.call('HSET', UGROUPS .. members[i], gid, '1') end
end
local seq, position = store(ARGV[16], ARGV[17], ARGV[13], members, '', false, '')
return answer({ seq, position, fan_out_left })
`,
);

const GROUP_CHANGE = script(
  "group_change",
  6,
  LIB,
  `
-- ARGV 13 kind (add, remove, leave, rename), 14 actor, 15 user or name, 16 event id, 17 head
local kind, actor = ARGV[13], ARGV[14]
if redis.call('EXISTS', G) == 0 then return { -2 } end
if redis.call('HEXISTS', MEMBERS, actor) == 0 then return { -1 } end
local creator = redis.call('HGET', G, 'createdBy')
if (kind == 'add' or kind == 'remove') and actor ~= creator then return { -1 } end
local seq, position = 0, 0
if kind == 'add' then
  local user = ARGV[15]
  if redis.call('HEXISTS', MEMBERS, user) == 0 then
    if redis.call('HLEN', MEMBERS) >= MAX_MEMBERS then return { -3 } end
    if not CLUSTER and redis.call('HLEN', UGROUPS .. user) >= MAX_GROUPS then return { -4, user } end
    local next_seq = tonumber(redis.call('HGET', G, 'seq')) + 1
    redis.call('HSET', MEMBERS, user, string.format('%d', next_seq))
    redis.call('HDEL', FORMER, user)
    -- Nothing unread yet: the messages so far are its base.
    redis.call('HSET', UNREAD, user, redis.call('HGET', G, 'messages') or '0')
    if not CLUSTER then redis.call('HSET', UGROUPS .. user, gid, '1') end
    seq, position = store(ARGV[16], ARGV[17], actor, redis.call('HKEYS', MEMBERS), '', false, '')
  end
elseif kind == 'remove' or kind == 'leave' then
  local user = kind == 'leave' and actor or ARGV[15]
  if redis.call('HEXISTS', MEMBERS, user) == 1 then
    -- The removed member gets the event of its removal, then nothing.
    seq, position = store(ARGV[16], ARGV[17], actor, redis.call('HKEYS', MEMBERS), '', false, '')
    redis.call('HDEL', MEMBERS, user)
    redis.call('HSET', FORMER, user, string.format('%d', seq))
    if not CLUSTER then redis.call('HDEL', UGROUPS .. user, gid) end
    redis.call('HDEL', UNREAD, user)
    redis.call('HDEL', READS, user)
  end
else
  redis.call('HSET', G, 'name', ARGV[15])
  seq, position = store(ARGV[16], ARGV[17], actor, redis.call('HKEYS', MEMBERS), '', false, '')
end
local state = redis.call('HMGET', G, 'name', 'createdBy', 'createdAt')
local out = { seq, position, fan_out_left, state[1], state[2], state[3] }
for _, m in ipairs(members_list()) do out[#out + 1] = m end
return answer(out)
`,
);

/**
 * KEYS 7 idempotency record, 8 the sender's rate log (not in cluster mode: another slot, the
 * node counts the rate first; ARGV 19 is then '').
 */
const GROUP_APPEND = script(
  "group_append",
  8,
  RATE_WINDOW,
  LIB,
  `
-- ARGV 13 from, 14 id, 15 head, 16 sending connection, 17 '1' with a clientMsgId,
-- 18 timestamp, 19 rate limit, 20 rate window (ms), 21 idempotency TTL (ms)
local from = ARGV[13]
if ARGV[17] == '1' then
  local earlier = redis.call('GET', KEYS[7])
  if earlier then
    local seq, any, position, id_length, rest = string.match(earlier, '^(%d+)|(%d+)|(%d+)|(%d+)|()')
    id_length = tonumber(id_length)
    local id = string.sub(earlier, rest, rest + id_length - 1)
    -- Cluster mode: the retry finishes the original's steps, for today's members (a member
    -- removed since got it at the latest with its removal, which fills its stream up to there).
    if CLUSTER then record_entry(redis.call('GET', MSG .. id) or '', redis.call('HKEYS', MEMBERS)) end
    -- Standalone: the retry helps drive the group's fan-out queue if it holds entries (the
    -- original's node may have died before its entry was through).
    if not CLUSTER then fan_out_left = redis.call('EXISTS', FANOUT) end
    return answer({ tonumber(seq), tonumber(any), tonumber(position), 1, id,
      string.sub(earlier, rest + id_length), fan_out_left })
  end
end
if redis.call('EXISTS', G) == 0 then return { -2 } end
if redis.call('HEXISTS', MEMBERS, from) == 0 then return { -1 } end
if ARGV[19] ~= '' then
  local allowed, retry_after_ms = consume_rate(KEYS[8], ARGV[19], ARGV[20])
  if allowed == 0 then return { -5, retry_after_ms } end
end
local id = ARGV[14]
-- The record completed by GROUP_FAN_OUT when a chunked entry is through (written below, with
-- the sender's position once the first chunk wrote it, else 0: pending).
local idem = ARGV[17] == '1' and KEYS[7] or ''
local seq, position, any = store(id, ARGV[15], from, redis.call('HKEYS', MEMBERS), ARGV[16], true, idem)
if ARGV[17] == '1' then
  redis.call('SET', KEYS[7], string.format('%d|%d|%d|%d|', seq, any, position, #id) .. id .. ARGV[18],
    'PX', ARGV[21])
end
return answer({ seq, any, position, 0, '', '', fan_out_left })
`,
);

/**
 * Chunked fan-out, standalone Redis (enqueue_fan_out and fan_out in LIB): one chunk of the
 * group's fan-out queue, CHUNK_MEMBERS members from its head, by any node (the sender's node,
 * in the background after its ack, or before it while earlier entries keep the sender's copy
 * out of the numbering script's chunk; a retry's; the next entry's, which finishes the earlier
 * ones; a heartbeat's, finishFanOuts).
 * ARGV 13 the seq the caller waits for, or '' for the queue's last one at this call.
 * Returns { 1 when that seq is fanned out (else 0), the sender's position (0 while its inbox
 * does not have it yet, or once the state expired), 1 when another recipient written so far
 * was online, that seq }.
 */
const GROUP_FAN_OUT = script(
  "group_fan_out",
  6,
  LIB,
  `
local target = tonumber(ARGV[13] == '' and (redis.call('LINDEX', FANOUT, -1) or '0') or ARGV[13])
local result = fanned_out(target, fan_out(CHUNK_MEMBERS))
result[4] = target
return result
`,
);

/**
 * The state of a group for a member (or, with ARGV 14 = '1', for a former member: its
 * removal's seq). Returns { status, name, createdBy, createdAt, removedAt, members... }, status
 * -2 unknown, -1 not a member.
 */
const GROUP_READ = script(
  "group_read",
  6,
  LIB,
  `
if redis.call('EXISTS', G) == 0 then return { -2 } end
local removed_at = '0'
if redis.call('HEXISTS', MEMBERS, ARGV[13]) == 0 then
  removed_at = ARGV[14] == '1' and redis.call('HGET', FORMER, ARGV[13])
  if not removed_at then return { -1 } end
end
local state = redis.call('HMGET', G, 'name', 'createdBy', 'createdAt', 'seq')
local out = { 0, state[1], state[2], state[3], removed_at, state[4] }
for _, m in ipairs(members_list()) do out[#out + 1] = m end
return out
`,
);

/** The user's groups: ids (from its `groups:` hash); the node reads each with GROUP_READ. */
const GROUP_MARK_READ = script(
  "group_mark_read",
  6,
  LIB,
  `
-- ARGV 13 user, 14 upTo, 15 the user's JSON literal, 16 receipt frame head, 17 receipts head,
-- 18 receipts max members
local user = ARGV[13]
if redis.call('EXISTS', G) == 0 then return -2 end
if redis.call('HEXISTS', MEMBERS, user) == 0 then return -1 end
local last = tonumber(redis.call('HGET', G, 'seq'))
local up_to = math.min(tonumber(ARGV[14]), last)
if up_to <= tonumber(redis.call('HGET', READS, user) or '0') then return 0 end
redis.call('HSET', READS, user, string.format('%d', up_to))
-- Unread: messages from others after the mark (texts decide: events and own messages aside).
local entries = last - up_to
local unread = 0
if entries > 0 then
  local refs = redis.call('LRANGE', GLOG, string.format('%d', -entries), '-1')
  local keys = {}
  for i = 1, #refs do keys[i] = MSG .. string.sub(refs[i], string.find(refs[i], '|', 1, true) + 1) end
  local own = '"from":' .. ARGV[15] .. ','
  for first = 1, #keys, 500 do
    local texts = redis.call('MGET', unpack(keys, first, math.min(first + 499, #keys)))
    for i = 1, #texts do
      local text = texts[i]
      if text and not string.find(text, ',"event":{', 1, true) and not string.find(text, own, 1, true) then
        unread = unread + 1
      end
    end
  end
end
redis.call('HSET', UNREAD, user, string.format('%d', unread_base(G, unread)))
if redis.call('HLEN', MEMBERS) <= tonumber(ARGV[18]) then
  if CLUSTER then
    -- The receipts go to the members' slots: the node sends them (RECEIPT).
    local out = { 1, up_to }
    for _, m in ipairs(redis.call('HKEYS', MEMBERS)) do
      if m ~= user then out[#out + 1] = m end
    end
    return out
  end
  local frame = ARGV[16] .. string.format('%d', up_to) .. '}'
  local others = {}
  for _, m in ipairs(redis.call('HKEYS', MEMBERS)) do
    if m ~= user then
      redis.call('HSET', ARGV[17] .. m, 'read|g' .. gid .. '|' .. user, frame)
      others[#others + 1] = m
    end
  end
  publish_frame(others, frame)
end
return 1
`,
);

/** Read-by: members other than ARGV 14 (the entry's sender) whose read mark is ≥ ARGV 13. */
const GROUP_READ_BY = script(
  "group_read_by",
  6,
  LIB,
  `
if redis.call('EXISTS', G) == 0 then return { -2 } end
if redis.call('HEXISTS', MEMBERS, ARGV[15]) == 0 then return { -1 } end
local seq = tonumber(ARGV[13])
local members = redis.call('HKEYS', MEMBERS)
local marks = hash_values(READS, members)
local count, total = 0, 0
for i = 1, #members do
  if members[i] ~= ARGV[14] then
    total = total + 1
    if tonumber(marks[i] or '0') >= seq then count = count + 1 end
  end
end
return { 0, count, total }
`,
);

/** A frame (typing) to every member but ARGV 13, who must be one. */
const GROUP_PUBLISH = script(
  "group_publish",
  6,
  LIB,
  `
if redis.call('EXISTS', G) == 0 then return -2 end
if redis.call('HEXISTS', MEMBERS, ARGV[13]) == 0 then return -1 end
local others = {}
for _, m in ipairs(redis.call('HKEYS', MEMBERS)) do
  if m ~= ARGV[13] then others[#others + 1] = m end
end
publish_frame(others, ARGV[14])
return 1
`,
);

const SUMMARY = `${UNREAD_COUNTS}
-- A group's name, last text and the user's unread count; nil when its last text expired.
local function summary(group_key, log_key, unread_key, text_head, user)
  local last = redis.call('LINDEX', log_key, '-1')
  local text = last and redis.call('GET', text_head .. string.sub(last, string.find(last, '|', 1, true) + 1))
  if not text then return nil end
  local fields = redis.call('HMGET', group_key, 'name', 'messages')
  local unread = unread_of(fields[2], redis.call('HGET', unread_key, user))
  return { fields[1] or '', text, string.format('%d', unread) }
end
`;

/**
 * For conversations() on a standalone Redis: per group id (ARGV 4..), in one script: the id, then
 * SUMMARY's name, last text and unread count.
 */
const GROUP_SUMMARIES = script(
  "group_summaries",
  0,
  SUMMARY,
  `
-- ARGV 1 user, 2 group key head, 3 msg head, 4.. group ids
local out = {}
for i = 4, #ARGV do
  local g = ARGV[i]
  local tag = '{g:' .. g .. '}'
  local found = summary(ARGV[2] .. 'group:' .. tag, ARGV[2] .. 'group-log:' .. tag,
    ARGV[2] .. 'group-unread:' .. tag, ARGV[3], ARGV[1])
  if found then
    out[#out + 1] = g
    for j = 1, 3 do out[#out + 1] = found[j] end
  end
end
return out
`,
);

/**
 * GROUP_SUMMARIES for one group, in its slot (Redis Cluster: a script per group).
 * KEYS: group, group-log, group-unread; ARGV: 1 user, 2 the group's text head
 * Returns { name, last text, unread } or {}.
 */
const GROUP_SUMMARY = script(
  "group_summary",
  3,
  SUMMARY,
  `
return summary(KEYS[1], KEYS[2], KEYS[3], ARGV[2], ARGV[1]) or {}
`,
);

/** Loaded at start (engine.ts), so that a group's first entry on a master is an EVALSHA hit. */
export const GROUP_SCRIPTS = [
  GROUP_CREATE,
  GROUP_CHANGE,
  GROUP_APPEND,
  GROUP_FAN_OUT,
  GROUP_READ,
  GROUP_MARK_READ,
  GROUP_READ_BY,
  GROUP_PUBLISH,
  GROUP_SUMMARIES,
  GROUP_SUMMARY,
];

/**
 * Chunked fan-out of large groups on a standalone Redis (GROUP_FAN_OUT, docs/groups.md): an
 * entry to more than `chunkAbove` members is written into their inboxes by scripts of at most
 * `chunkMembers` members each, so that no script runs long.
 */
export interface GroupFanOutOptions {
  /**
   * Entries to at most this many members are written by the script that numbers them, as
   * before (one round trip); larger ones are chunked.
   */
  readonly chunkAbove: number;
  /**
   * Members written per chunk script, the bound of its time: about 4 µs a member and 0.3 ms a
   * script here (125: a median of 0.7 ms; 250: 1.2 to 1.9 ms, docs/groups.md).
   */
  readonly chunkMembers: number;
}

export const DEFAULT_GROUP_FAN_OUT: GroupFanOutOptions = { chunkAbove: 256, chunkMembers: 125 };

/**
 * How long a fanned-out entry's state (the sender's position) is kept for the sender's node,
 * which normally reads it within milliseconds; a retry later reads the idempotency record.
 */
const FAN_OUT_STATE_TTL_MS = 10 * 60_000;

/** The codes the scripts answer with (below 0) as refusals. */
function refusalOf(code: unknown, detail?: unknown): GroupRefusedError | undefined {
  switch (code) {
    case -1:
      return new GroupRefusedError(
        "forbidden",
        "You are not a member of this group (or not an admin, for this).",
      );
    case -2:
      return new GroupRefusedError("not_found", "There is no such group.");
    case -3:
      return new GroupRefusedError("group_full", "The group is at its member limit.");
    case -4:
      return new GroupRefusedError(
        "too_many_groups",
        `${JSON.stringify(String(detail))} is in as many groups as a user may be.`,
      );
    default:
      return undefined;
  }
}

export class RedisGroupStore implements GroupStore {
  /** Redis Cluster: the steps outside the group's slot (cluster-groups.ts); standalone: none. */
  readonly steps: ClusterGroupSteps | undefined;
  /**
   * Tests only (injectGroupFanOutFaultForTests): called (and awaited) before each chunk this
   * node runs in the background after an ack (1, 2, … per driver run, see drive); an error it
   * throws stops that driver there, as a node dying after its ack would.
   */
  faultForTests: ((chunk: number) => void | Promise<void>) | undefined;
  /** finishFanOuts is running. */
  private finishing = false;
  /**
   * The groups whose fan-out queue this node is driving in the background (drive), one driver
   * each; `again`: an entry was queued meanwhile, so the driver goes on once through.
   */
  private readonly drivers = new Map<string, { again: boolean; running?: Promise<void> }>();

  constructor(
    private readonly client: RedisClient,
    private readonly keys: Keys,
    private readonly messages: RedisMessageStore,
    private readonly retention: RetentionOptions,
    private readonly rateLimit: RateLimitOptions,
    private readonly limits: GroupLimits,
    /** For typing frames on Redis Cluster (a SPUBLISH per member). */
    private readonly broker: Broker,
    private readonly fanOutOptions: GroupFanOutOptions = DEFAULT_GROUP_FAN_OUT,
    /** Background fan-out failures, left to the heartbeat (finishFanOuts). */
    private readonly logger: { debug?(obj: object, msg?: string): void } = {},
  ) {
    messages.groups = this;
    this.steps = keys.cluster
      ? new ClusterGroupSteps(client, keys, retention, rateLimit, IDEMPOTENCY_TTL_MS)
      : undefined;
  }

  /**
   * KEYS 1-6 and ARGV 1-12 of every group script. In cluster mode the per-user heads are empty
   * (their keys are in other slots: the scripts then leave the members' side to the node).
   */
  private base(groupId: string): ScriptArgument[] {
    const { keys } = this;
    const cluster = keys.cluster;
    return [
      keys.group("group", groupId),
      keys.group("group-members", groupId),
      keys.group("group-log", groupId),
      keys.group("group-former", groupId),
      keys.group("group-unread", groupId),
      keys.group("group-reads", groupId),
      groupId,
      this.retention.messageTtlMs,
      this.retention.maxEntries,
      cluster ? "" : keys.inboxPosition(""),
      cluster ? "" : keys.inboxLog(""),
      cluster ? "" : keys.queue(""),
      cluster
        ? ""
        : [
            keys.nodes,
            keys.presenceNodeHead,
            keys.group("group-fanout", groupId),
            keys.group("group-fanout-to", groupId),
            keys.group("group-fanout-entry", groupId),
            this.fanOutOptions.chunkAbove,
            this.fanOutOptions.chunkMembers,
            FAN_OUT_STATE_TTL_MS,
            keys.groupFanOutPending,
            keys.nodeChannelHead,
          ].join("\n"),
      keys.textHeadOfGroup(groupId),
      cluster ? "" : keys.presenceCount,
      cluster ? "" : keys.userGroups(""),
      this.limits.maxMembers,
      this.limits.maxGroupsPerUser,
    ];
  }

  /** Splits base() into its keys (6) and arguments, with a script's own keys in between. */
  private run(
    lua: typeof GROUP_CREATE,
    groupId: string,
    extraKeys: ScriptArgument[],
    args: ScriptArgument[],
  ): Promise<unknown> {
    const base = this.base(groupId);
    return runScript(
      this.client,
      { ...lua, numberOfKeys: 6 + extraKeys.length },
      [...base.slice(0, 6), ...extraKeys, ...base.slice(6), ...args],
      true,
    );
  }

  /**
   * A writing script's reply, and in cluster mode the entry it stored (answer() in LIB), whose
   * members' steps the node then runs.
   */
  private async runStep(
    lua: typeof GROUP_CREATE,
    groupId: string,
    extraKeys: ScriptArgument[],
    args: ScriptArgument[],
  ): Promise<{ reply: unknown[]; entry: StoredEntry | undefined }> {
    const reply = strictArray(await this.run(lua, groupId, extraKeys, args));
    if (!Array.isArray(reply[0])) return { reply, entry: undefined };
    const out = strictArray(reply[0]);
    const [json, ...flat] = strings(strictArray(reply[1]), "group step");
    const recipients: [string, number][] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) {
      recipients.push([flat[i] as string, Number(flat[i + 1])]);
    }
    if (json === undefined || json === "") return { reply: out, entry: undefined };
    const { seq, id } = JSON.parse(json) as { seq: number; id: string };
    return { reply: out, entry: { seq, id, json, recipients } };
  }

  /** Cluster mode: refuses (too_many_groups) when one of `users` is at its group limit. */
  private async checkGroupLimit(groupId: string, users: readonly string[]): Promise<void> {
    const over = await this.steps?.overGroupLimit(groupId, users, this.limits.maxGroupsPerUser);
    if (over !== undefined) throw refusalOf(-4, over) as GroupRefusedError;
  }

  async create(input: {
    groupId: string;
    name: string;
    createdBy: string;
    members: readonly string[];
    eventId: string;
    timestamp: string;
  }): Promise<GroupChange> {
    const members = [...new Set([input.createdBy, ...input.members])];
    if (members.length > this.limits.maxMembers) throw refusalOf(-3) as GroupRefusedError;
    await this.checkGroupLimit(input.groupId, members);
    const head = this.eventHead(input.groupId, input.createdBy, input.eventId, input.timestamp, {
      kind: "created",
      name: input.name,
      members,
    });
    const { reply, entry } = await this.runStep(
      GROUP_CREATE,
      input.groupId,
      [],
      [input.createdBy, input.name, input.timestamp, input.eventId, head, ...members],
    );
    const [seq, position, detail] = reply as [number, number, unknown];
    const refusal = refusalOf(seq, detail);
    if (refusal !== undefined) throw refusal;
    const left = detail === 1;
    return {
      group: {
        groupId: input.groupId,
        name: input.name,
        members,
        admins: [input.createdBy],
        createdBy: input.createdBy,
        createdAt: input.timestamp,
      },
      seq,
      position: await this.deliverAs(
        input.groupId,
        entry,
        input.createdBy,
        "",
        seq,
        position,
        left,
      ),
    };
  }

  /**
   * The actor's position of a membership event: in cluster mode after running the members'
   * steps of `entry`; on a standalone Redis, for a large group's entry (chunked), once the
   * actor's own inbox has it (position 0 from its script: earlier entries filled the numbering
   * script's chunk), the rest of its fan-out driven in the background (`left`: the script left
   * some), if it was stored (seq > 0).
   */
  private async deliverAs(
    groupId: string,
    entry: StoredEntry | undefined,
    actor: string,
    excludeConnId: string,
    seq: number,
    position: number,
    left: boolean,
  ): Promise<number> {
    if (this.steps === undefined) {
      const actorPosition =
        seq > 0 && position === 0 ? (await this.senderCopy(groupId, seq)).actorPosition : position;
      if (left || (seq > 0 && position === 0)) this.drive(groupId);
      return actorPosition;
    }
    if (entry === undefined) return position;
    return (await this.steps.deliver(groupId, entry, actor, excludeConnId, true)).actorPosition;
  }

  /**
   * One GROUP_FAN_OUT call for the queue's entry of seq `target` ("": its last at the call):
   * [done, the sender's position, any online, the seq waited for].
   */
  private async fanOutChunk(
    groupId: string,
    target: number | "",
  ): Promise<[number, number, number, number]> {
    const reply = await this.run(GROUP_FAN_OUT, groupId, [], [target]);
    return integers<[number, number, number, number]>(reply, 4, "group fan-out");
  }

  /**
   * Standalone Redis, a chunked entry whose sender's inbox does not have it yet (the numbering
   * script's chunk went to earlier entries of the queue, or a retry found the record pending):
   * runs GROUP_FAN_OUT until it does, and answers the sender's position and whether another
   * recipient written so far was online. Each call writes at most chunkMembers members, of the
   * entries before `seq` (those of a concurrent sender, or left by a node that died) or of
   * `seq`, its sender first: the queue ahead is finite, so this ends. The rest of `seq` is left
   * to drive (the caller starts it).
   */
  private async senderCopy(
    groupId: string,
    seq: number,
  ): Promise<{ actorPosition: number; delivered: boolean }> {
    for (;;) {
      const [done, position, any] = await this.fanOutChunk(groupId, seq);
      if (position > 0) return { actorPosition: position, delivered: any === 1 };
      if (done === 1) {
        // Its state expired (minutes after it was done): a retry reads the idempotency record.
        throw new EngineUnavailableError(`group ${groupId} entry ${seq}: fan-out state expired`, {
          mayHaveSucceeded: true,
        });
      }
    }
  }

  /**
   * Standalone Redis: drives the group's fan-out queue in the background until it is empty,
   * after an entry was acked (its sender's copy and the queue are stored, so the rest is this
   * node's work, or any other node's if this one dies: a retry, the group's next entry, a
   * heartbeat's finishFanOuts). At most one driver per group on this node: an entry queued while
   * one runs is picked up by it (`again`). A failure ends the driver (logged at debug): the
   * heartbeat sweep, or the group's next entry, finishes the queue.
   */
  private drive(groupId: string): void {
    const running = this.drivers.get(groupId);
    if (running !== undefined) {
      running.again = true;
      return;
    }
    const driver: { again: boolean; running?: Promise<void> } = { again: false };
    this.drivers.set(groupId, driver);
    driver.running = this.driveQueue(groupId, driver).catch((error: unknown) => {
      this.logger.debug?.(
        { err: error, groupId },
        "group fan-out stopped; left to the heartbeat sweep",
      );
    });
  }

  /**
   * Waits (at most `timeoutMs`) for the background drivers running now (drive), at shutdown:
   * what they do not finish is left to the other nodes (heartbeat sweep, next entries).
   */
  async settle(timeoutMs: number): Promise<void> {
    const running = [...this.drivers.values()].flatMap((driver) =>
      driver.running === undefined ? [] : [driver.running],
    );
    if (running.length === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(running),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, timeoutMs);
      }),
    ]);
    clearTimeout(timer);
  }

  private async driveQueue(groupId: string, driver: { again: boolean }): Promise<void> {
    try {
      for (let chunk = 1; ; chunk++) {
        await this.faultForTests?.(chunk);
        const [done] = await this.fanOutChunk(groupId, "");
        if (done !== 1) continue;
        // Through the queue's last entry at that call: done, unless an entry came meanwhile.
        if (!driver.again) return;
        driver.again = false;
      }
    } finally {
      // In the same turn as the last answer, so that a later drive() starts a new driver.
      this.drivers.delete(groupId);
    }
  }

  /**
   * Standalone Redis, every heartbeat (engine.ts): runs the chunks of up to 16 groups whose
   * fan-out queue holds entries, up to the entries queued at the start. Their senders' nodes
   * normally do it within milliseconds (this only helps them); it finishes what a node that
   * died mid fan-out left when no retry and no later entry of the group comes. One run at a
   * time per node.
   */
  async finishFanOuts(): Promise<void> {
    if (this.steps !== undefined || this.finishing) return;
    this.finishing = true;
    try {
      const groupIds = await this.client.srandmember(this.keys.groupFanOutPending, 16);
      for (const groupId of groupIds) {
        let target: number | "" = "";
        for (;;) {
          const [done, , , through] = await this.fanOutChunk(groupId, target);
          if (done === 1) break;
          target = through;
        }
      }
    } catch (error) {
      throw toEngineError(error);
    } finally {
      this.finishing = false;
    }
  }

  async change(input: {
    groupId: string;
    actor: string;
    kind: "add" | "remove" | "leave" | "rename";
    userId?: string;
    name?: string;
    eventId: string;
    timestamp: string;
  }): Promise<GroupChange> {
    const subject = input.kind === "leave" ? input.actor : (input.userId ?? "");
    if (input.kind === "add") await this.checkGroupLimit(input.groupId, [subject]);
    const event: GroupEvent =
      input.kind === "rename"
        ? { kind: "renamed", name: input.name ?? "" }
        : {
            kind: input.kind === "add" ? "joined" : input.kind === "remove" ? "removed" : "left",
            userId: subject,
          };
    const head = this.eventHead(input.groupId, input.actor, input.eventId, input.timestamp, event);
    const { reply, entry } = await this.runStep(
      GROUP_CHANGE,
      input.groupId,
      [],
      [
        input.kind,
        input.actor,
        input.kind === "rename" ? (input.name ?? "") : subject,
        input.eventId,
        head,
      ],
    );
    const refusal = refusalOf(reply[0], reply[1]);
    if (refusal !== undefined) throw refusal;
    const [seq, position, left, name, createdBy, createdAt, ...members] = reply as [
      number,
      number,
      number,
      string,
      string,
      string,
      ...string[],
    ];
    return {
      group: stateOf(input.groupId, name, createdBy, createdAt, members),
      seq,
      position: await this.deliverAs(
        input.groupId,
        entry,
        input.actor,
        "",
        seq,
        position,
        left === 1,
      ),
    };
  }

  async get(userId: string, groupId: string): Promise<GroupState> {
    return (await this.read(userId, groupId, false)).state;
  }

  private async read(
    userId: string,
    groupId: string,
    former: boolean,
  ): Promise<{ state: GroupState; removedAt: number; lastSeq: number }> {
    const reply = strictArray(await this.run(GROUP_READ, groupId, [], [userId, former ? "1" : ""]));
    const refusal = refusalOf(reply[0]);
    if (refusal !== undefined) throw refusal;
    const [, name, createdBy, createdAt, removedAt, lastSeq, ...members] = strings(
      reply.map(String),
      "group",
    );
    return {
      state: stateOf(groupId, name ?? "", createdBy ?? "", createdAt ?? "", members),
      removedAt: Number(removedAt),
      lastSeq: Number(lastSeq),
    };
  }

  async groupsOf(userId: string, limit: number): Promise<GroupState[]> {
    const ids = await this.groupIdsOf(userId);
    const states = await Promise.all(
      ids.slice(0, limit).map((groupId) => this.get(userId, groupId).catch(() => undefined)),
    );
    return states.filter((state): state is GroupState => state !== undefined);
  }

  private async groupIdsOf(userId: string): Promise<string[]> {
    try {
      return await this.client.hkeys(this.keys.userGroups(userId));
    } catch (error) {
      throw toEngineError(error);
    }
  }

  async append(input: GroupAppendInput): Promise<GroupAppendResult | RateRefusal> {
    const { keys, steps } = this;
    // Cluster mode: the rate window is in the sender's slot, so it is counted first (a retry
    // or a refused send counts too, unlike standalone mode).
    const refused = await steps?.consumeRate(input.from);
    if (refused !== undefined) return refused;
    const head = groupMessageWithoutSeq({
      id: input.id,
      groupId: input.groupId,
      from: input.from,
      content: input.content,
      timestamp: input.timestamp,
      ...(input.clientMsgId === undefined ? {} : { clientMsgId: input.clientMsgId }),
    });
    const idempotency = keys.groupIdempotency(input.groupId, input.from, input.clientMsgId ?? "");
    const [{ reply, entry }, senderConnections] = await Promise.all([
      this.runStep(
        GROUP_APPEND,
        input.groupId,
        steps === undefined ? [idempotency, keys.rate(input.from)] : [idempotency],
        [
          input.from,
          input.id,
          head,
          input.senderConnId,
          input.clientMsgId === undefined ? "" : "1",
          input.timestamp,
          steps === undefined ? this.rateLimit.limit : "",
          this.rateLimit.windowMs,
          IDEMPOTENCY_TTL_MS,
        ],
      ),
      steps?.connections(input.from),
    ]);
    const code = reply[0];
    if (code === -5) return { refused: true, retryAfterMs: Number(reply[1]), limit: "rate" };
    const refusal = refusalOf(code);
    if (refusal !== undefined) throw refusal;
    const [seq, any, position, duplicate, messageId, timestamp, left] = reply as [
      number,
      number,
      number,
      number,
      string?,
      string?,
      number?,
    ];
    const delivery =
      steps !== undefined && entry !== undefined
        ? await steps.deliver(
            input.groupId,
            entry,
            input.from,
            input.senderConnId,
            // As standalone: the sender's other connections get a copy, if it has any.
            (senderConnections ?? 0) > (input.senderConnId === "" ? 0 : 1),
          )
        : position === 0
          ? // A large group's entry (or a retry of one) not in its sender's inbox yet.
            await this.senderCopy(input.groupId, seq)
          : { actorPosition: position, delivered: any === 1 };
    // Standalone, a large group's entry: the ack goes out now (its sender's copy and the rest
    // of its fan-out are stored); this node writes the rest into the other inboxes after it.
    if (steps === undefined && (left === 1 || position === 0)) this.drive(input.groupId);
    return {
      messageId: duplicate === 1 ? (messageId as string) : input.id,
      timestamp: duplicate === 1 ? (timestamp as string) : input.timestamp,
      duplicate: duplicate === 1,
      seq,
      status: delivery.delivered ? "delivered" : "queued",
      senderPosition: delivery.actorPosition,
    };
  }

  async history(
    userId: string,
    groupId: string,
    limit: number,
    before?: number,
  ): Promise<HistoryPage> {
    const { removedAt } = await this.read(userId, groupId, true);
    // A former member reads up to its removal only.
    const ceiling = removedAt > 0 ? removedAt + 1 : Number.POSITIVE_INFINITY;
    const end = Math.min(before ?? Number.POSITIVE_INFINITY, ceiling);
    return this.messages.logPage(
      this.keys.group("group-log", groupId),
      limit,
      end,
      this.keys.textHeadOfGroup(groupId),
    );
  }

  async markRead(userId: string, groupId: string, upTo: number): Promise<void> {
    const frame = groupReceiptFrame(groupId, userId, 0);
    const reply = await this.run(
      GROUP_MARK_READ,
      groupId,
      [],
      [
        userId,
        Math.min(Math.floor(upTo), Number.MAX_SAFE_INTEGER),
        JSON.stringify(userId),
        frame.slice(0, -2),
        this.keys.receiptsHead,
        this.limits.receiptsMaxMembers,
      ],
    );
    if (Array.isArray(reply)) {
      // Cluster mode: the receipts to the other members, in their slots.
      const [, mark, ...members] = reply as [number, number, ...string[]];
      await this.steps?.readReceipts(
        members,
        groupId,
        userId,
        groupReceiptFrame(groupId, userId, mark),
      );
      return;
    }
    const refusal = refusalOf(reply);
    if (refusal !== undefined) throw refusal;
  }

  async readBy(
    userId: string,
    groupId: string,
    seq: number,
  ): Promise<{ count: number; members: number }> {
    const page = await this.history(userId, groupId, 1, seq + 1);
    const text = page.messages[0];
    const sender =
      text === undefined || (JSON.parse(text) as { seq: number }).seq !== seq
        ? ""
        : (JSON.parse(text) as { from: string }).from;
    const reply = strictArray(await this.run(GROUP_READ_BY, groupId, [], [seq, sender, userId]));
    const refusal = refusalOf(reply[0]);
    if (refusal !== undefined) throw refusal;
    return { count: Number(reply[1]), members: Number(reply[2]) };
  }

  async publishToMembers(userId: string, groupId: string, frame: string): Promise<void> {
    if (this.steps !== undefined) {
      // Cluster mode: the members' channels are in their slots; one SPUBLISH each.
      const { members } = await this.get(userId, groupId);
      const others = members.filter((member) => member !== userId);
      await Promise.all(others.map((member) => this.broker.publishFrame(member, frame)));
      return;
    }
    const refusal = refusalOf(await this.run(GROUP_PUBLISH, groupId, [], [userId, frame]));
    if (refusal !== undefined) throw refusal;
  }

  /** conversations()'s group side: the user's groups with an entry, most recent first. */
  async summaries(userId: string, limit: number): Promise<ConversationSummary[]> {
    const ids = await this.groupIdsOf(userId);
    if (ids.length === 0) return [];
    const flat = this.keys.cluster
      ? (await Promise.all(ids.map((groupId) => this.summaryInSlot(userId, groupId)))).flat()
      : strings(
          await runScript(this.client, GROUP_SUMMARIES, [
            userId,
            this.keys.prefix,
            this.keys.messageHead,
            ...ids,
          ]),
          "group summaries",
        );
    const summaries: ConversationSummary[] = [];
    for (let i = 0; i + 3 < flat.length; i += 4) {
      summaries.push({
        with: flat[i] as string,
        group: { name: flat[i + 1] as string },
        lastMessageJson: flat[i + 2] as string,
        unread: Number(flat[i + 3]),
      });
    }
    summaries.sort((a, b) => {
      const x = timestampOf(a.lastMessageJson);
      const y = timestampOf(b.lastMessageJson);
      return x < y ? 1 : x > y ? -1 : 0;
    });
    return summaries.slice(0, limit);
  }

  /** Cluster mode: one group's summary (GROUP_SUMMARY), as GROUP_SUMMARIES' four fields. */
  private async summaryInSlot(userId: string, groupId: string): Promise<string[]> {
    const { keys } = this;
    const found = strings(
      await runScript(this.client, GROUP_SUMMARY, [
        keys.group("group", groupId),
        keys.group("group-log", groupId),
        keys.group("group-unread", groupId),
        userId,
        keys.textHeadOfGroup(groupId),
      ]),
      "group summary",
    );
    return found.length === 0 ? [] : [groupId, ...found];
  }

  private eventHead(
    groupId: string,
    from: string,
    id: string,
    timestamp: string,
    event: GroupEvent,
  ): string {
    return groupMessageWithoutSeq({ id, groupId, from, event, timestamp });
  }
}

function stateOf(
  groupId: string,
  name: string,
  createdBy: string,
  createdAt: string,
  members: string[],
): GroupState {
  // Only the creator administers a group (while it is a member).
  return {
    groupId,
    name,
    members,
    admins: members.includes(createdBy) ? [createdBy] : [],
    createdBy,
    createdAt,
  };
}

function strictArray(reply: unknown): unknown[] {
  if (!Array.isArray(reply)) throw new Error(`unexpected group script reply ${String(reply)}`);
  return reply;
}

function timestampOf(json: string): string {
  const at = json.indexOf('"timestamp":"');
  return json.slice(at + 13, at + 37);
}
