-- Move dead letters back to the subscription's queue, each exactly once.
-- KEYS[1] dlq stream, KEYS[2] queue stream; ARGV pairs: dlq entry id, encoded message.
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[2], '*', 'm', ARGV[i + 1])
    n = n + 1
  end
end
return n
