-- Delete a consumer only when it has nothing pending (deleting one with pending entries
-- makes them unclaimable: redis#9745).  KEYS[1] stream; ARGV[1] group, ARGV[2] consumer.
local ok, p = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if not ok then return -1 end
if #p > 0 then return 0 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2]) + 1
