-- Refresh or release the dedupe claims a worker holds (chi_redis.runtime.dedupe): a key
-- is touched only while it still holds the caller's token, so a claim that expired and was
-- taken by another run is left alone.
-- KEYS: claim keys (one subscription's: same hash tag); ARGV[1] 'refresh' or 'release',
-- ARGV[2] the claim's time to live in ms, ARGV[2 + i] the token of KEYS[i].
local n = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[2 + i] then
    if ARGV[1] == 'release' then
      redis.call('DEL', KEYS[i])
    else
      redis.call('PEXPIRE', KEYS[i], ARGV[2])
    end
    n = n + 1
  end
end
return n
