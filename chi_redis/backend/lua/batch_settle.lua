-- Settle a batch message that did not simply succeed, at most once (docs/design.md §5.10):
-- XADD the dead letters of its poison events, XADD the parts it was split into to the
-- subscription's private stream, and only then XACK every entry the message held (XDEL
-- those of the private stream).  Writes come first because a script is not rolled back:
-- when Redis refuses one (out of memory, NOPERM) nothing is acked and the entries stay
-- pending for a later attempt.  If the first entry is no longer pending (a call retried
-- after a lost reply, or another consumer acked it) nothing is written.  When the group is
-- gone (Redis lost its state) the writes still happen: they are the only copy left.
-- On a cluster the entries' streams are in other slots: the caller checks the first entry
-- and acks them itself, after this call with KEYS[1..2] only (at least once, 3.4).
-- KEYS[1] private stream, KEYS[2] dead-letter stream, KEYS[3..] streams of the entries
-- ARGV[1] group, ARGV[2] dead-letter MAXLEN (approx.), ARGV[3] number of parts,
-- ARGV[4] number of dead letters, then for each of KEYS[3..]: a count n and n entry ids,
-- then each part's message body, then each dead letter: 2 * its field count and its
-- field, value pairs.
-- Returns the dead letters' new ids (a list, maybe empty), or 0 when nothing was pending.
local group = ARGV[1]
local parts = tonumber(ARGV[3])
local letters = tonumber(ARGV[4])
local pos = 5
local acks = {}
for k = 3, #KEYS do
  local n = tonumber(ARGV[pos])
  local ids = {}
  for j = 1, n do ids[j] = ARGV[pos + j] end
  acks[k] = ids
  pos = pos + n + 1
end
if #KEYS >= 3 then
  local first = acks[3][1]
  local ok, pending = pcall(redis.call, 'XPENDING', KEYS[3], group, first, first, 1)
  if ok and #pending == 0 then
    return 0
  end
end
local written = {}
local bodies = {}
for j = 1, parts do bodies[j] = ARGV[pos]; pos = pos + 1 end
for j = 1, letters do
  local n = tonumber(ARGV[pos])
  local fields = {}
  for i = 1, n do fields[i] = ARGV[pos + i] end
  pos = pos + n + 1
  written[j] = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(fields))
end
for j = 1, parts do redis.call('XADD', KEYS[1], '*', 'm', bodies[j]) end
for k = 3, #KEYS do
  local ids = acks[k]
  for i = 1, #ids, 1000 do
    local chunk = {}
    for j = i, math.min(i + 999, #ids) do chunk[#chunk + 1] = ids[j] end
    redis.call('XACK', KEYS[k], group, unpack(chunk))
    if KEYS[k] == KEYS[1] then redis.call('XDEL', KEYS[k], unpack(chunk)) end
  end
end
return written
