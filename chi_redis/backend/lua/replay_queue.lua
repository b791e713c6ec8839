-- Deliver replayed messages into one subscription's private stream and record the replay
-- checkpoint in the same atomic step, so a resumed replay neither repeats nor skips.
-- KEYS[1] private stream, KEYS[2] checkpoint hash (untouched when ARGV[1] is 0)
-- ARGV[1] number of checkpoint field/value pairs, then the pairs, then the message lengths
-- (decimal, space-separated), then the encoded messages concatenated (one argument: far
-- cheaper for the client to send than one argument per message).  One XADD per message,
-- field 'm'.  Returns the number of messages added; writes nothing when the lengths do
-- not add up to the payload.
local nf = tonumber(ARGV[1])
local first = 2 + 2 * nf
local blob = ARGV[first + 1]
local lens = {}
local total = 0
for len in string.gmatch(ARGV[first], '%d+') do
  local l = tonumber(len)
  lens[#lens + 1] = l
  total = total + l
end
if total ~= #blob then
  return redis.error_reply('ERR replay_queue: message lengths do not add up to the payload')
end
local pos = 1
for i = 1, #lens do
  local stop = pos + lens[i]
  redis.call('XADD', KEYS[1], '*', 'm', string.sub(blob, pos, stop - 1))
  pos = stop
end
if nf > 0 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 2, first - 1))
  redis.call('HINCRBY', KEYS[2], 'delivered', #lens)
end
return #lens
