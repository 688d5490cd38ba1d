-- Apply a batch of one user's events atomically, each event once.
-- KEYS (all share the user's hash tag, so this runs unchanged on Redis Cluster):
--   1 profile  2 day buckets  3 categories  4 skus  5 channels  6 applied events  7 offsets
--   (6 is a hash: event id -> digest of the event's content, see summary.digest)
-- ARGV: 1 source ("topic:partition")  2 retention in days  3 the largest total kept (summary.MAX_TOTAL)
--   4 JSON array of compact events:
--   {event_id, offset, digest, kind, day, ts_ms, channel, weekend, detail, amount_cents, items}
--   kind: "p" purchase, "c" cart, "b" browse, "i" interaction; detail: cart action / interaction kind;
--   items (purchase only): flat {category, sku, qty, amount_cents, ...}
-- Returns {applied, {position, reason, ...}}: how many events were applied, and each event refused
-- (1-based position in ARGV[4]) with its reason:
--   conflicting_duplicate  the id was applied (or refused) before with other content; nothing changes
--   amount_out_of_range / quantity_out_of_range  a lifetime total would pass ARGV[3]; the id is kept,
--     marked refused ('!' .. code .. digest), so the same event again is refused again
-- The same id with the same content again (a resend, or a replay after a crash) is skipped silently,
-- and so is a new id at or below the source partition's offset watermark (a replayed offset).
local profile, days, cats, skus, chans, seen, offsets =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local source = ARGV[1]
local retention = tonumber(ARGV[2])
local max_total = tonumber(ARGV[3])
local events = cjson.decode(ARGV[4])
local REFUSED = {a = 'amount_out_of_range', q = 'quantity_out_of_range'}

-- Lua numbers print as 1.7e+12 through tostring; Redis needs plain integers.
local function int(n) return string.format('%d', n) end

-- State written before content digests kept the applied ids in a set. Their content is
-- unknown (''), so a resend of one of them counts as the same event.
if redis.call('TYPE', seen).ok == 'set' then
  local ids = redis.call('SMEMBERS', seen)
  redis.call('DEL', seen)
  for _, id in ipairs(ids) do redis.call('HSET', seen, id, '') end
end

-- Whether a purchase would take a lifetime total past max_total: 'a' (money: the order
-- amounts 'pa', or the order lines 'la', which bound every category's amount) or 'q' (the
-- quantities 'lq', which bound every category's and sku's), else nil. Sums of doubles
-- round monotonically, so the comparison is exact at the bound.
local function over_limit(cents, items)
  local totals = redis.call('HMGET', profile, 'pa', 'la', 'lq')
  local line_cents, qty = 0, 0
  for i = 1, #items, 4 do
    qty = qty + items[i + 2]
    line_cents = line_cents + items[i + 3]
  end
  if (tonumber(totals[1]) or 0) + cents > max_total or (tonumber(totals[2]) or 0) + line_cents > max_total then
    return 'a'
  end
  if (tonumber(totals[3]) or 0) + qty > max_total then return 'q' end
  return nil
end

local watermark = tonumber(redis.call('HGET', offsets, source) or '-1')
local newest_offset = watermark
local maxday = tonumber(redis.call('HGET', profile, 'maxday') or '-1')
local old_maxday = maxday
local applied = 0
local refused = {}

local function refuse(position, reason)
  refused[#refused + 1] = position
  refused[#refused + 1] = reason
end

-- An id seen before: silent when the content is the same, else refused.
local function seen_again(position, stored, digest)
  if stored == digest or stored == '' then return end
  if string.sub(stored, 1, 1) == '!' and string.sub(stored, 3) == digest then
    refuse(position, REFUSED[string.sub(stored, 2, 2)])
  else
    refuse(position, 'conflicting_duplicate')
  end
end

for position, e in ipairs(events) do
  local event_id, offset, digest, kind, day, ts = e[1], e[2], e[3], e[4], e[5], e[6]
  local new = false
  if offset > watermark then
    new = redis.call('HSETNX', seen, event_id, digest) == 1
    if not new then seen_again(position, redis.call('HGET', seen, event_id), digest) end
  else
    local stored = redis.call('HGET', seen, event_id)
    if stored then seen_again(position, stored, digest) end
  end
  local over = new and kind == 'p' and over_limit(e[10], e[11])
  if over then
    redis.call('HSET', seen, event_id, '!' .. over .. digest)
    refuse(position, REFUSED[over])
  elseif new then
    applied = applied + 1
    if offset > newest_offset then newest_offset = offset end
    if day > maxday then maxday = day end
    local channel = e[7]
    redis.call('HINCRBY', chans, channel, 1)
    local first_seen = redis.call('HGET', profile, 'fs')
    if not first_seen or ts < tonumber(first_seen) then redis.call('HSET', profile, 'fs', int(ts)) end
    local last_seen = redis.call('HGET', profile, 'ls')
    if not last_seen or ts > tonumber(last_seen) then redis.call('HSET', profile, 'ls', int(ts)) end
    if kind == 'p' then
      local cents = e[10]
      redis.call('HINCRBY', profile, 'pc', 1)
      redis.call('HINCRBY', profile, 'pa', int(cents))
      redis.call('HINCRBY', profile, e[8] == 1 and 'pwe' or 'pwd', 1)
      redis.call('HINCRBY', chans, 'p:' .. channel, 1)
      local fp = redis.call('HGET', profile, 'fp')
      if not fp or ts < tonumber(fp) then redis.call('HSET', profile, 'fp', int(ts)) end
      local lp = redis.call('HGET', profile, 'lp')
      if not lp or ts > tonumber(lp) then redis.call('HSET', profile, 'lp', int(ts)) end
      -- Buckets older than the retention horizon would be pruned at once; lifetime still counts them.
      if day > maxday - retention then
        redis.call('HINCRBY', days, 'c' .. int(day), 1)
        redis.call('HINCRBY', days, 'a' .. int(day), int(cents))
      end
      local items = e[11]
      local counted_cat, counted_sku = {}, {}
      local line_cents, line_qty = 0, 0
      for i = 1, #items, 4 do
        local cat, sku, qty, item_cents = items[i], items[i + 1], items[i + 2], items[i + 3]
        line_cents = line_cents + item_cents
        line_qty = line_qty + qty
        redis.call('HINCRBY', cats, 'q:' .. cat, int(qty))
        redis.call('HINCRBY', cats, 'a:' .. cat, int(item_cents))
        redis.call('HINCRBY', skus, 'q:' .. sku, int(qty))
        -- Order counters count each order once per category/sku (tags like TP2 = bought twice).
        if not counted_cat[cat] then
          counted_cat[cat] = true
          redis.call('HINCRBY', cats, 'o:' .. cat, 1)
        end
        if not counted_sku[sku] then
          counted_sku[sku] = true
          redis.call('HINCRBY', skus, 'o:' .. sku, 1)
        end
      end
      redis.call('HINCRBY', profile, 'la', int(line_cents))
      redis.call('HINCRBY', profile, 'lq', int(line_qty))
    elseif kind == 'c' then
      redis.call('HINCRBY', profile, 'nc', 1)
      redis.call('HINCRBY', profile, 'c:' .. e[9], 1)
    elseif kind == 'b' then
      redis.call('HINCRBY', profile, 'nb', 1)
    else
      redis.call('HINCRBY', profile, 'ni', 1)
      redis.call('HINCRBY', profile, 'k:' .. e[9], 1)
    end
  end
end

if applied > 0 then
  -- A change counter: tier evaluations made from an older read are rejected by tiers.lua.
  redis.call('HINCRBY', profile, 'n', applied)
end
if newest_offset > watermark then redis.call('HSET', offsets, source, int(newest_offset)) end
if maxday > old_maxday then
  redis.call('HSET', profile, 'maxday', int(maxday))
  -- Retention follows event time: drop buckets that fell behind the newest event's day.
  local horizon = maxday - retention
  local stale = {}
  for _, field in ipairs(redis.call('HKEYS', days)) do
    if tonumber(string.sub(field, 2)) <= horizon then stale[#stale + 1] = field end
  end
  if #stale > 0 then redis.call('HDEL', days, unpack(stale)) end
end
return {applied, refused}
