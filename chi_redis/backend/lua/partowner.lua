-- One rebalancing round of a consumer of a partitioned topic (docs/design.md §15.3).
-- KEYS[1] the subscription's members zset; KEYS[2..N+1] the lease keys of the topic's N
-- partitions (all in the subscription's slot).
-- ARGV[1] consumer, ARGV[2] lease ms, ARGV[3] one character per partition: '1' = this
-- consumer has an entry of it in flight (never released while so), ARGV[4] '1' = leaving.
-- Heartbeat, drop dead members, then hold ceil(N / live) partitions: release the surplus
-- (highest first, never one in flight), renew the rest, take free ones up to the share.
-- Returns the 0-based indexes of the partitions held.
local me, ttl, busy, leaving = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if leaving then
  redis.call('ZREM', KEYS[1], me)
else
  redis.call('ZADD', KEYS[1], now + ttl, me)
end
-- (ZRANGEBYSCORE + ZREM, not ZREMRANGEBYSCORE, and PEXPIRE 1, not DEL: the worker's ACL
-- grants those, docs/security.md)
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('ZREM', KEYS[1], dead)
end
redis.call('PEXPIRE', KEYS[1], ttl * 100)
local live = redis.call('ZCARD', KEYS[1])
local n = #KEYS - 1
local share = 0
if not leaving and live > 0 then share = math.ceil(n / live) end
local mine, free = {}, {}
for i = 1, n do
  local owner = redis.call('GET', KEYS[i + 1])
  if owner == me then mine[#mine + 1] = i elseif not owner then free[#free + 1] = i end
end
local held, count = {}, #mine
for j = #mine, 1, -1 do
  local i = mine[j]
  if count > share and string.sub(busy, i, i) ~= '1' then
    redis.call('PEXPIRE', KEYS[i + 1], 1)  -- released: free within a millisecond
    count = count - 1
  else
    redis.call('PEXPIRE', KEYS[i + 1], ttl)
    held[#held + 1] = i - 1
  end
end
for _, i in ipairs(free) do
  if count >= share then break end
  redis.call('SET', KEYS[i + 1], me, 'PX', ttl)
  held[#held + 1] = i - 1
  count = count + 1
end
return held
