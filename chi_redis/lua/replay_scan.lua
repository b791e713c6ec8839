-- Replay one topic's range into a subscription's private stream entirely on the server:
-- read a page of the topic stream, turn each entry into the Dramatiq message its actor
-- runs, XADD it, and record the checkpoint, all in one atomic step.  The message bytes are
-- exactly what chi_redis.encoder.encode_message gives for
--   Message(queue_name=sub, actor_name=sub, args=(topic, {field: bytes}), kwargs={},
--           options={"src": stream, "src_id": entry id, "replay": True},
--           message_id=sub .. ":" .. event id, message_timestamp=server time in ms)
-- (msgpack, smallest encodings, field values as bin): tests compare them byte for byte.
-- KEYS[1] topic stream, KEYS[2] private stream, KEYS[3] checkpoint hash (KEYS[2] if none)
-- ARGV[1] first id (inclusive), ARGV[2] last id (inclusive), ARGV[3] page size,
-- ARGV[4] subscription, ARGV[5] topic, ARGV[6] '1' to record the checkpoint,
-- ARGV[7] n1, then n1 Lua patterns, then n2, then n2 Lua patterns: an entry is delivered
--   when its type matches one pattern of each non-empty list and it is not archived.
-- Returns {scanned, delivered, skipped by type, skipped archived, last scanned id}.
local char, floor, concat = string.char, math.floor, table.concat

local function u16(n) return char(floor(n / 256) % 256, n % 256) end
local function u32(n)
  return char(floor(n / 16777216) % 256, floor(n / 65536) % 256, floor(n / 256) % 256, n % 256)
end
local function str(s)
  local n = #s
  if n < 32 then return char(0xa0 + n) .. s end
  if n < 256 then return char(0xd9, n) .. s end
  if n < 65536 then return char(0xda) .. u16(n) .. s end
  return char(0xdb) .. u32(n) .. s
end
local function bin(s)
  local n = #s
  if n < 256 then return char(0xc4, n) .. s end
  if n < 65536 then return char(0xc5) .. u16(n) .. s end
  return char(0xc6) .. u32(n) .. s
end
local function map_header(n)
  if n < 16 then return char(0x80 + n) end
  return char(0xde) .. u16(n)
end
local function uint(n)  -- n < 2^53
  if n < 128 then return char(n) end
  if n < 256 then return char(0xcc, n) end
  if n < 65536 then return char(0xcd) .. u16(n) end
  if n < 4294967296 then return char(0xce) .. u32(n) end
  return char(0xcf) .. u32(floor(n / 4294967296)) .. u32(n % 4294967296)
end

local sub, topic = ARGV[4], ARGV[5]
local a = 7
local lists = {}
for l = 1, 2 do
  local n = tonumber(ARGV[a])
  local pats = {}
  for i = 1, n do pats[i] = ARGV[a + i] end
  lists[l] = pats
  a = a + n + 1
end
local function wanted(t)
  for _, pats in ipairs(lists) do
    if #pats > 0 then
      local ok = false
      for _, p in ipairs(pats) do
        if string.find(t, p) then ok = true break end
      end
      if not ok then return false end
    end
  end
  return true
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
-- The parts every message of this call shares.
local head = map_header(7) .. str('queue_name') .. str(sub) .. str('actor_name') .. str(sub)
  .. str('args') .. char(0x92) .. str(topic)
local opts = str('kwargs') .. map_header(0) .. str('options') .. map_header(3)
  .. str('src') .. str(KEYS[1]) .. str('src_id')
local tail = str('message_timestamp') .. uint(now)
local mid = str('replay') .. char(0xc3) .. str('message_id')

local ents = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', tonumber(ARGV[3]))
local delivered, by_type, archived = 0, 0, 0
for _, e in ipairs(ents) do
  local f = e[2]
  local etype, eid, arc = '', '', false
  for i = 1, #f, 2 do
    local k = f[i]
    if k == 'type' then etype = f[i + 1]
    elseif k == 'id' then eid = f[i + 1]
    elseif k == 'arc' then arc = true end
  end
  if arc then
    archived = archived + 1
  elseif not wanted(etype) then
    by_type = by_type + 1
  else
    local parts = {head, map_header(#f / 2)}
    for i = 1, #f, 2 do
      parts[#parts + 1] = str(f[i])
      parts[#parts + 1] = bin(f[i + 1])
    end
    parts[#parts + 1] = opts
    parts[#parts + 1] = str(e[1])
    parts[#parts + 1] = mid
    parts[#parts + 1] = str(sub .. ':' .. eid)
    parts[#parts + 1] = tail
    redis.call('XADD', KEYS[2], '*', 'm', concat(parts))
    delivered = delivered + 1
  end
end
local last = ''
if #ents > 0 then last = ents[#ents][1] end
if ARGV[6] == '1' and last ~= '' then
  redis.call('HSET', KEYS[3], 'pos', '{"' .. topic .. '": "' .. last .. '"}')
  redis.call('HINCRBY', KEYS[3], 'delivered', delivered)
end
return {#ents, delivered, by_type, archived, last}
