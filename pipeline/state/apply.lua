-- Apply a batch of one user's events atomically.
-- KEYS (all share the user's hash tag, so this runs unchanged on Redis Cluster):
--   1 profile  2 day buckets  3 categories  4 skus  5 channels  6 applied event ids  7 offsets
-- ARGV: 1 source ("topic:partition")  2 retention in days  3 JSON array of compact events:
--   {event_id, offset, kind, day, ts_ms, channel, weekend, detail, amount_cents, items}
--   kind: "p" purchase, "c" cart, "b" browse, "i" interaction; detail: cart action / interaction kind;
--   items (purchase only): flat {category, sku, qty, amount_cents, ...}
-- Returns the number of events applied (duplicates and replayed offsets are skipped).
local profile, days, cats, skus, chans, seen, offsets =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local source = ARGV[1]
local retention = tonumber(ARGV[2])
local events = cjson.decode(ARGV[3])

-- Lua numbers print as 1.7e+12 through tostring; Redis needs plain integers.
local function int(n) return string.format('%d', n) end

local watermark = tonumber(redis.call('HGET', offsets, source) or '-1')
local newest_offset = watermark
local maxday = tonumber(redis.call('HGET', profile, 'maxday') or '-1')
local old_maxday = maxday
local applied = 0

for _, e in ipairs(events) do
  local event_id, offset, kind, day, ts = e[1], e[2], e[3], e[4], e[5]
  if offset > watermark and redis.call('SADD', seen, event_id) == 1 then
    applied = applied + 1
    if offset > newest_offset then newest_offset = offset end
    if day > maxday then maxday = day end
    local channel = e[6]
    redis.call('HINCRBY', chans, channel, 1)
    local first_seen = redis.call('HGET', profile, 'fs')
    if not first_seen or ts < tonumber(first_seen) then redis.call('HSET', profile, 'fs', int(ts)) end
    local last_seen = redis.call('HGET', profile, 'ls')
    if not last_seen or ts > tonumber(last_seen) then redis.call('HSET', profile, 'ls', int(ts)) end
    if kind == 'p' then
      local cents = e[9]
      redis.call('HINCRBY', profile, 'pc', 1)
      redis.call('HINCRBY', profile, 'pa', int(cents))
      redis.call('HINCRBY', profile, e[7] == 1 and 'pwe' or 'pwd', 1)
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
      local items = e[10]
      local counted_cat, counted_sku = {}, {}
      for i = 1, #items, 4 do
        local cat, sku, qty, item_cents = items[i], items[i + 1], items[i + 2], items[i + 3]
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
    elseif kind == 'c' then
      redis.call('HINCRBY', profile, 'nc', 1)
      redis.call('HINCRBY', profile, 'c:' .. e[8], 1)
    elseif kind == 'b' then
      redis.call('HINCRBY', profile, 'nb', 1)
    else
      redis.call('HINCRBY', profile, 'ni', 1)
      redis.call('HINCRBY', profile, 'k:' .. e[8], 1)
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
return applied
