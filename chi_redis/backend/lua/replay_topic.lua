-- Republish replayed events onto their topics as new events (new ids, metadata marking
-- them as replays), with the replay checkpoint in the same atomic step.  The entry layout,
-- late index (only events far from their append time) and id lookup are those of
-- publish.lua.
-- KEYS[1] checkpoint hash, then per event: stream, index, ids hash of its topic.  (The
--   topics set is written by the publisher beforehand.)
-- ARGV[1] number of checkpoint field/value pairs (0: no checkpoint), then the pairs, then
--   per event 8 values: topic, id, type, ts(us), ver, meta, enc, data.
-- Returns the new stream ids.
local BEHIND, AHEAD = 100, 50
local function late(sid, ts)
  local d = tonumber(string.match(sid, '^(%d+)')) - math.floor(tonumber(ts) / 1000)
  return d > BEHIND or d < -AHEAD
end
local nf = tonumber(ARGV[1])
local a = 2 + 2 * nf
local out = {}
local k = 2
while a <= #ARGV do
  local topic, id, ts = ARGV[a], ARGV[a + 1], ARGV[a + 3]
  local sid = redis.call('XADD', KEYS[k], '*', 'id', id, 'type', ARGV[a + 2], 'ts', ts,
    'ver', ARGV[a + 4], 'meta', ARGV[a + 5], 'enc', ARGV[a + 6], 'data', ARGV[a + 7])
  if late(sid, ts) then redis.call('ZADD', KEYS[k + 1], ts, sid) end
  redis.call('HSET', KEYS[k + 2], id, topic .. ' ' .. sid)
  out[#out + 1] = sid
  a = a + 8
  k = k + 3
end
if nf > 0 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 2, 1 + 2 * nf))
  redis.call('HINCRBY', KEYS[1], 'delivered', #out)
end
return out
