-- Deliver replayed messages into one subscription's private stream and record the replay
-- checkpoint in the same atomic step, so a resumed replay neither repeats nor skips.
-- KEYS[1] private stream, KEYS[2] checkpoint hash (untouched when ARGV[1] is 0)
-- ARGV[1] number of checkpoint field/value pairs, then the pairs, then the encoded
-- messages (one XADD each, field 'm').  Returns the number of messages added.
local nf = tonumber(ARGV[1])
local first = 2 + 2 * nf
local n = 0
for j = first, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'm', ARGV[j])
  n = n + 1
end
if nf > 0 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 2, first - 1))
  redis.call('HINCRBY', KEYS[2], 'delivered', n)
end
return n
