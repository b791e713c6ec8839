-- Schedule a message: score = server time (ms) + delay, so every worker agrees on "due".
-- KEYS[1] delayed zset; ARGV[1] delay ms, ARGV[2] encoded message.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
return now
