-- Publish a chunk of events atomically, one round trip.
-- KEYS[1] ids hash, KEYS[2] topics set, then per event: stream, index, idempotency key
--   (the stream key again when the event has none).
-- ARGV[1] idempotency TTL (ms), ARGV[2] number of events, then per event 10 values:
--   has_idem, topic, id, type, ts(us), ver, meta, enc, data, arc
-- Returns the stream id of each event.  An event id already written (a retry after a lost
-- reply) and a live idempotency key both return the first stream id and write nothing.
local ids, topics = KEYS[1], KEYS[2]
local ttl = ARGV[1]
local n = tonumber(ARGV[2])
local out = {}
local new_topics = {}
local a = 3
for i = 0, n - 1 do
  local k = 3 + i * 3
  local stream, index, idem = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local has_idem, topic, id = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local sid = false
  if has_idem == '1' then sid = redis.call('GET', idem) end
  if not sid then
    local known = redis.call('HGET', ids, id)
    if known then sid = string.match(known, ' (.*)$') end
  end
  if not sid then
    local ts = ARGV[a + 4]
    if ARGV[a + 9] == '1' then
      sid = redis.call('XADD', stream, '*', 'id', id, 'type', ARGV[a + 3], 'ts', ts,
        'ver', ARGV[a + 5], 'meta', ARGV[a + 6], 'enc', ARGV[a + 7], 'data', ARGV[a + 8],
        'arc', '1')
    else
      sid = redis.call('XADD', stream, '*', 'id', id, 'type', ARGV[a + 3], 'ts', ts,
        'ver', ARGV[a + 5], 'meta', ARGV[a + 6], 'enc', ARGV[a + 7], 'data', ARGV[a + 8])
    end
    redis.call('ZADD', index, ts, sid)
    redis.call('HSET', ids, id, topic .. ' ' .. sid)
    if has_idem == '1' then redis.call('SET', idem, sid, 'PX', ttl) end
    if not new_topics[topic] then
      new_topics[topic] = true
      redis.call('SADD', topics, topic)
    end
  elseif has_idem == '1' and redis.call('EXISTS', idem) == 0 then
    redis.call('SET', idem, sid, 'PX', ttl)
  end
  out[i + 1] = sid
  a = a + 10
end
return out
