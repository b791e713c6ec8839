-- Entries of a stream from the head, skipping ARGV[1] and returning at most ARGV[2].
-- Skipping happens on the server, so a deep offset costs no network transfer.
local skip, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local start = '-'
local chunk = 1000
while skip > 0 do
  local n = math.min(skip, chunk)
  local ents = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', n)
  if #ents == 0 then return {} end
  skip = skip - #ents
  start = '(' .. ents[#ents][1]
  if #ents < n then return {} end
end
return redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', limit)
