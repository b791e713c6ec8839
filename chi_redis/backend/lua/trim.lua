-- Retention: trim the oldest entries of a topic stream, never past what a consumer group
-- still needs, together with their time-index members and id lookups (docs/design.md §5.7).
-- The safe bound is computed here, atomically with the trim: for every group, the oldest
-- pending entry (XPENDING) or else the entry after its last-delivered-id.  A group created
-- or rewound a moment ago is therefore always respected.
-- KEYS[1] stream, KEYS[2] time index, KEYS[3] ids hash
-- ARGV[1] age bound: entries with an id below it are over age ('' = no age policy)
-- ARGV[2] max length (-1 = no length policy), ARGV[3] most entries to trim in this call
-- Returns {trimmed, last trimmed id, reason, holding group, safe bound} where reason is
-- 'done' (policy met), 'held' (a group needs the next entry) or 'more' (call again).
local function parse(id)
  return string.match(id, '^(%d+)-(%d+)$')
end
local function numlt(a, b)  -- decimal strings without leading zeros
  if #a ~= #b then return #a < #b end
  return a < b
end
local function lt(x, y)
  local xm, xs = parse(x)
  local ym, ys = parse(y)
  if xm ~= ym then return numlt(xm, ym) end
  return numlt(xs, ys)
end
local function succ(id)
  local ms, seq = parse(id)
  if #seq < 15 then return ms .. '-' .. string.format('%d', tonumber(seq) + 1) end
  return string.format('%d', tonumber(ms) + 1) .. '-0'
end

if redis.call('EXISTS', KEYS[1]) == 0 then return {0, '', 'done', '', ''} end

local bound, holder = nil, ''
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local need = succ(info['last-delivered-id'])
  if tonumber(info['pending']) > 0 then
    local p = redis.call('XPENDING', KEYS[1], info['name'])
    if p[2] and lt(p[2], need) then need = p[2] end
  end
  if bound == nil or lt(need, bound) then
    bound = need
    holder = info['name']
  end
end

local agebound = ARGV[1]
local maxlen = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local excess = -1
if maxlen >= 0 then excess = redis.call('XLEN', KEYS[1]) - maxlen end
local ents = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', limit)
local sids, evids = {}, {}
local reason = 'done'
for _, e in ipairs(ents) do
  local id = e[1]
  local want = (#sids < excess) or (agebound ~= '' and lt(id, agebound))
  if not want then break end
  if bound ~= nil and not lt(id, bound) then
    reason = 'held'
    break
  end
  sids[#sids + 1] = id
  local f = e[2]
  for j = 1, #f, 2 do
    if f[j] == 'id' then
      evids[#evids + 1] = f[j + 1]
      break
    end
  end
end
if reason == 'done' and #sids == limit then reason = 'more' end
if #sids > 0 then
  local last = sids[#sids]
  redis.call('XTRIM', KEYS[1], 'MINID', succ(last))
  redis.call('ZREM', KEYS[2], unpack(sids))
  if #evids > 0 then redis.call('HDEL', KEYS[3], unpack(evids)) end
  -- XTRIM does not move the stream's max-deleted-entry-id (only XDEL does): record it,
  -- so XINFO STREAM (and replay's gap report) can tell what was trimmed.
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  local lastgen, maxdel = nil, '0-0'
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then lastgen = info[i + 1] end
    if info[i] == 'max-deleted-entry-id' then maxdel = info[i + 1] end
  end
  if lastgen and lt(maxdel, last) then
    redis.call('XSETID', KEYS[1], lastgen, 'MAXDELETEDID', last)
  end
end
return {#sids, sids[#sids] or '', reason, holder, bound or ''}
