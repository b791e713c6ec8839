-- Move due delayed messages into the queue stream, atomically, by the server clock.
-- KEYS[1] delayed zset, KEYS[2] queue stream; ARGV[1] max to move.
-- Returns ms until the next message is due (-1 when none is waiting).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'm', m)
  redis.call('ZREM', KEYS[1], m)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then return -1 end
local wait = tonumber(nxt[2]) - now
if wait < 0 then wait = 0 end
return wait
