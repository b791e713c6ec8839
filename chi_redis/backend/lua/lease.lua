-- Refresh the lease (reset idle time) of entries this consumer still owns.
-- XCLAIM ... JUSTID does not bump the delivery count; entries another consumer has
-- reclaimed meanwhile are left alone.
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3..] entry ids (at most a few
-- hundred per call).
-- (The id list must be the *last* expression of the call: Lua truncates an unpack() in
-- the middle of an argument list to its first value.)
local claim = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #p > 0 then claim[#claim + 1] = ARGV[i] end
end
local n = #claim - 5
if n == 0 then return 0 end
claim[#claim + 1] = 'JUSTID'
redis.call(unpack(claim))
return n
