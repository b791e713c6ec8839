-- Refresh the lease (reset idle time) of entries this consumer still owns.
-- XCLAIM ... JUSTID does not bump the delivery count; entries another consumer has
-- reclaimed meanwhile are left alone.
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3..] entry ids.
local owned = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #p > 0 then owned[#owned + 1] = ARGV[i] end
end
if #owned == 0 then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(owned), 'JUSTID')
return #owned
