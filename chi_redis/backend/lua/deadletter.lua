-- Dead-letter one entry, at most once: XADD the dead letter, then XACK the source entry
-- (and XDEL the entry when it lives in the subscription's private stream).  The dead letter
-- is written first because a script is not rolled back: when Redis refuses the XADD (out of
-- memory, NOPERM) nothing has changed yet and the entry stays pending for a later attempt.
-- If the entry is no longer pending (a call retried after a lost reply, or another consumer
-- acked it meanwhile) nothing is written.  When the group itself is gone (Redis lost its
-- state) the dead letter is still written: it is the only copy of the entry left.
-- KEYS[1] source stream, KEYS[2] dead-letter stream
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] '1' to XDEL the entry, ARGV[4] MAXLEN (approx.),
-- ARGV[5..] field, value pairs of the dead letter.
-- Returns the dead letter's new entry id when written (what `chi-redis dlq show` takes),
-- 0 when the entry was not pending (nothing written).
local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if ok and #pending == 0 then
  return 0  -- the group exists and the entry is not pending: already handled
end
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(fields))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '1' then redis.call('XDEL', KEYS[1], ARGV[2]) end
return id
