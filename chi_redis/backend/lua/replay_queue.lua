-- Deliver replayed messages into one subscription's private stream and record the replay
-- checkpoint in the same atomic step, so a resumed replay neither repeats nor skips.
-- KEYS[1] private stream, KEYS[2] checkpoint hash (untouched when ARGV[1] is 0)
-- ARGV[1] number of checkpoint field/value pairs, then the pairs, then the encoded
-- messages, one argument each (the client frames them itself, so one argument a message
-- costs it no more than one payload, and the server needs no splitting).  One XADD per
-- message, field 'm'.  Returns the number of messages added.
local nf = tonumber(ARGV[1])
local first = 2 + 2 * nf
local call, key = redis.call, KEYS[1]
for i = first, #ARGV do
  call('XADD', key, '*', 'm', ARGV[i])
end
local n = #ARGV - first + 1
if nf > 0 then
  call('HSET', KEYS[2], unpack(ARGV, 2, first - 1))
  call('HINCRBY', KEYS[2], 'delivered', n)
end
return n
