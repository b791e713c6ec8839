-- One page of a topic stream by id range, keeping the entries whose event time (ts, us) is
-- in [lo, hi]: the stream side of an event-time query (docs/design.md §3.3), filtered here
-- so that the margin read around the range never crosses the network.
-- KEYS[1] stream; ARGV[1] first id, ARGV[2] last id (inclusive), ARGV[3] most entries to
-- read, ARGV[4] lo (us), ARGV[5] hi (us).
-- Returns {entries read, id of the last one read ('' if none), entry, entry, ...}; each
-- entry as XRANGE returns it.
local ents = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])
local lo, hi = tonumber(ARGV[4]), tonumber(ARGV[5])
local out = {#ents, ''}
if #ents > 0 then out[2] = ents[#ents][1] end
for i = 1, #ents do
  local f = ents[i][2]
  local ts
  if f[5] == 'ts' then
    ts = tonumber(f[6])
  else
    for j = 1, #f - 1, 2 do
      if f[j] == 'ts' then
        ts = tonumber(f[j + 1])
        break
      end
    end
  end
  if ts and ts >= lo and ts <= hi then out[#out + 1] = ents[i] end
end
return out
