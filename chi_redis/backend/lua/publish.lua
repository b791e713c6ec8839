-- Publish a chunk of events atomically, in one round trip.
-- KEYS: stream, index and ids hash of each topic of the chunk (3 keys per topic), then
--   the idempotency keys of the chunk (if any).  On a cluster a chunk holds one topic, so
--   every key is in its slot; the topics set is written by the publisher, outside.
-- ARGV: [1] idempotency TTL (ms), [2] number of events, [3] number of topics, [4] arc
--   ('1': archive writes), [5] payload encoding tag, [6] '1' when events carry an
--   idempotency key index, then the topic names, then per event 7 values:
--   topic slot (1-based), id, type, ts (us), ver, meta, data
--   (plus the 1-based index of its idempotency key, 0 for none, when ARGV[6] is '1').
-- The time index only holds "late" events: those whose event time is more than 100 ms
-- before or 50 ms after the append time of their stream id (docs/design.md §3.3; the
-- bounds are ON_TIME_BEHIND_MS / ON_TIME_AHEAD_MS in backend/streamids.py).  The others are
-- found by event time through the stream itself, read by id range with that margin.
-- Returns the stream id of each event.  An event id already written (a retry after a lost
-- reply), an id seen earlier in the chunk and a live idempotency key all return the first
-- stream id and write nothing.
-- redis.call is the expensive part of a script, so a chunk costs one XADD per event plus a
-- few commands per chunk.  The first write is always an XADD: a server over maxmemory
-- refuses the call before it changes anything (scripts are OOM-checked at their first
-- write), and never half-way through.
local unpack = unpack or table.unpack
local ttl, n, nt = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local arc, enc, has_idem = ARGV[4] == '1', ARGV[5], ARGV[6] == '1'
local per = has_idem and 8 or 7
local base = 6 + nt
local BEHIND, AHEAD = 100, 50

-- Whether an event's time (us) is too far from its entry's append time (ms) to be found
-- through the stream by id range: it then goes into the time index.
local function late(sid, ts)
  local d = tonumber(string.match(sid, '^(%d+)')) - math.floor(tonumber(ts) / 1000)
  return d > BEHIND or d < -AHEAD
end

local function xadd(stream, a, ts)
  if arc then
    return redis.call('XADD', stream, '*', 'id', ARGV[a + 2], 'type', ARGV[a + 3], 'ts', ts,
      'ver', ARGV[a + 5], 'meta', ARGV[a + 6], 'enc', enc, 'data', ARGV[a + 7], 'arc', '1')
  end
  return redis.call('XADD', stream, '*', 'id', ARGV[a + 2], 'type', ARGV[a + 3], 'ts', ts,
    'ver', ARGV[a + 5], 'meta', ARGV[a + 6], 'enc', enc, 'data', ARGV[a + 7])
end

local function idem_key(a)
  if has_idem and ARGV[a + 8] ~= '0' then return KEYS[3 * nt + tonumber(ARGV[a + 8])] end
  return false
end

-- One event (publish): straight-line, the fewest commands and tables.
if n == 1 then
  local slot, id, idem = tonumber(ARGV[base + 1]), ARGV[base + 2], idem_key(base)
  local sid = false
  if idem then sid = redis.call('GET', idem) end
  if not sid then
    local known = redis.call('HGET', KEYS[3 * slot], id)
    if known then sid = string.match(known, ' (.*)$') end
  end
  if sid then
    if idem and redis.call('EXISTS', idem) == 0 then redis.call('SET', idem, sid, 'PX', ttl) end
    return {sid}
  end
  local topic, ts = ARGV[6 + slot], ARGV[base + 4]
  sid = xadd(KEYS[3 * slot - 2], base, ts)
  if idem then redis.call('SET', idem, sid, 'PX', ttl) end
  redis.call('HSET', KEYS[3 * slot], id, topic .. ' ' .. sid)
  if late(sid, ts) then redis.call('ZADD', KEYS[3 * slot - 1], ts, sid) end
  return {sid}
end

-- A chunk: one XADD per event; the id lookups and the late indexes are read and written
-- with one command per topic.
local SLICE = 1000 -- arguments per command: stays far below Lua's unpack limit

local function sliced(cmd, key, args)
  local out = {}
  for i = 1, #args, SLICE do
    local part = redis.call(cmd, key, unpack(args, i, math.min(i + SLICE - 1, #args)))
    if type(part) == 'table' then
      for j = 1, #part do out[#out + 1] = part[j] end
    end
  end
  return out
end

local per_slot, at = {}, {}
for i = 0, n - 1 do
  local slot = tonumber(ARGV[base + i * per + 1])
  local list = per_slot[slot]
  if not list then list = {}; per_slot[slot] = list end
  list[#list + 1] = ARGV[base + i * per + 2]
  at[i + 1] = #list
end
local found = {}
for slot, list in pairs(per_slot) do found[slot] = sliced('HMGET', KEYS[3 * slot], list) end
local known = {}
for i = 0, n - 1 do
  known[i + 1] = found[tonumber(ARGV[base + i * per + 1])][at[i + 1]]
end

-- Which written events are late is settled per topic once the chunk is written: stream ids
-- only grow within a stream, so when every event time of a topic is on time for both its
-- first and its last stream id of the chunk, none is late (the common case: one number
-- compared per event); otherwise each of its events is checked.
local out, seen, id_args, used, written = {}, {}, {}, {}, {}
local first_sid, last_sid, lo_ts, hi_ts = {}, {}, {}, {}
for i = 0, n - 1 do
  local a = base + i * per
  local slot, id, idem = tonumber(ARGV[a + 1]), ARGV[a + 2], idem_key(a)
  local sid = false
  if idem then sid = redis.call('GET', idem) end
  if not sid then sid = seen[id] end
  if not sid and known[i + 1] then sid = string.match(known[i + 1], ' (.*)$') end
  if not sid then
    local ts = ARGV[a + 4]
    sid = xadd(KEYS[3 * slot - 2], a, ts)
    local t = tonumber(ts)
    local lo = lo_ts[slot]
    if not lo then
      lo_ts[slot], hi_ts[slot], first_sid[slot] = t, t, sid
      used[#used + 1] = slot
    elseif t < lo then
      lo_ts[slot] = t
    elseif t > hi_ts[slot] then
      hi_ts[slot] = t
    end
    last_sid[slot] = sid
    written[#written + 1] = i
    local hargs = id_args[slot]
    if not hargs then hargs = {}; id_args[slot] = hargs end
    hargs[#hargs + 1] = id
    hargs[#hargs + 1] = ARGV[6 + slot] .. ' ' .. sid
    if idem then redis.call('SET', idem, sid, 'PX', ttl) end
  elseif idem and redis.call('EXISTS', idem) == 0 then
    redis.call('SET', idem, sid, 'PX', ttl)
  end
  seen[id] = sid
  out[i + 1] = sid
end

-- The id lookup first: should a later command fail, a retry still finds these events.
for _, slot in ipairs(used) do sliced('HSET', KEYS[3 * slot], id_args[slot]) end
local index_args, check = {}, false
for _, slot in ipairs(used) do
  local first = tonumber(string.match(first_sid[slot], '^(%d+)'))
  local last = tonumber(string.match(last_sid[slot], '^(%d+)'))
  if lo_ts[slot] < (last - BEHIND) * 1000 or hi_ts[slot] >= (first + AHEAD + 1) * 1000 then
    index_args[slot] = {}
    check = true
  end
end
if check then
  for _, i in ipairs(written) do
    local a = base + i * per
    local zargs = index_args[tonumber(ARGV[a + 1])]
    if zargs and late(out[i + 1], ARGV[a + 4]) then
      zargs[#zargs + 1] = ARGV[a + 4]
      zargs[#zargs + 1] = out[i + 1]
    end
  end
end
for _, slot in ipairs(used) do
  local zargs = index_args[slot]
  if zargs and #zargs > 0 then sliced('ZADD', KEYS[3 * slot - 1], zargs) end
end
return out
