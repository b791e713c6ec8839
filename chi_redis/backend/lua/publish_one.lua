-- Publish one event (EventBus.publish): publish.lua's single-event path with the fewest
-- arguments, since each argument costs on both sides of the round trip.
-- KEYS: [1] the topic's stream, [2] its time index, [3] its ids hash,
--   [4] the idempotency key (only when one is given).  All in the topic's slot.
-- ARGV: [1] id, [2] type, [3] ts (us), [4] ver, [5] meta, [6] payload encoding tag,
--   [7] data, [8] idempotency TTL (ms; only with KEYS[4]).
-- Returns the stream id.  An event id already written (a retry after a lost reply) or a
-- live idempotency key return the first stream id and write nothing.  The topic is the
-- stream key's hash tag; the entry, the id lookup and the late index (3.3 of
-- docs/design.md, same bounds as publish.lua) are those of publish.lua.  The first write
-- is the XADD, as there.  (The topics set is written by the publisher, outside.)
local id, ts, idem = ARGV[1], ARGV[3], KEYS[4]
local sid = false
if idem then sid = redis.call('GET', idem) end
if not sid then
  local known = redis.call('HGET', KEYS[3], id)
  if known then sid = string.match(known, ' (.*)$') end
end
if sid then
  if idem and redis.call('EXISTS', idem) == 0 then redis.call('SET', idem, sid, 'PX', ARGV[8]) end
  return sid
end
sid = redis.call('XADD', KEYS[1], '*', 'id', id, 'type', ARGV[2], 'ts', ts, 'ver', ARGV[4],
  'meta', ARGV[5], 'enc', ARGV[6], 'data', ARGV[7])
if idem then redis.call('SET', idem, sid, 'PX', ARGV[8]) end
local topic = string.match(KEYS[1], '{(.*)}')
redis.call('HSET', KEYS[3], id, topic .. ' ' .. sid)
local BEHIND, AHEAD = 100, 50
local d = tonumber(string.match(sid, '^(%d+)')) - math.floor(tonumber(ts) / 1000)
if d > BEHIND or d < -AHEAD then redis.call('ZADD', KEYS[2], ts, sid) end
return sid
