-- Delete one event: its stream entry, its index member and its id lookup.
-- KEYS[1] stream, KEYS[2] index, KEYS[3] ids hash; ARGV[1] stream id, ARGV[2] event id.
local n = redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local h = redis.call('HDEL', KEYS[3], ARGV[2])
return n + h
