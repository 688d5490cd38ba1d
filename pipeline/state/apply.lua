-- Apply a batch of one user's events atomically, each event once.
-- KEYS (all share the user's hash tag, so this runs unchanged on Redis Cluster):
--   1 profile  2 day buckets  3 categories  4 skus  5 channels  6 dedupe  7 legacy offsets
--   2, 3 and 4 keep one field per day / category / sku, its counters packed in one value
--   (summary.py reads them): 'c' .. day -> purchases:cents, category -> orders:qty:cents,
--   sku -> orders:qty.
--   6 is a hash of bounded size: '@' .. source -> offset watermark of that source partition,
--   '.' -> the arrival minute of the next pruning, and one field per id remembered:
--   id key -> arrival minute .. ':' .. digest (refused: .. ':!' .. code .. digest).
--   7 is the watermark hash of earlier versions, moved into 6 on first touch.
-- ARGV: 1 source ("topic:partition")  2 retention in days  3 the largest total kept (summary.MAX_TOTAL)
--   4 the dedupe window in minutes  5 JSON array of compact events:
--   {id_key, offset, digest, arrival_min, kind, day, ts_ms, channel, weekend, detail, amount_cents, items}
--   kind: "p" purchase, "c" cart, "b" browse, "i" interaction; detail: cart action / interaction kind;
--   items (purchase only): flat {category, sku, qty, amount_cents, ...}
-- Returns {applied, {position, reason, ...}}: how many events were applied, and each event refused
-- (1-based position in ARGV[5]) with its reason:
--   conflicting_duplicate  the id was applied (or refused) within the window with other content
--   amount_out_of_range / quantity_out_of_range  a lifetime total would pass ARGV[3]; the id is kept,
--     marked refused, so the same event again within the window is refused again
-- Each event once: an offset at or below its source partition's watermark (a replay) is skipped
-- whatever its age; a new offset whose id arrived less than the window before is a resend: skipped
-- silently with the same content, refused with other content. An id comes back later than that is new.
local profile, days, cats, skus, chans, seen, legacy_offsets =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local source = ARGV[1]
local retention = tonumber(ARGV[2])
local max_total = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local events = cjson.decode(ARGV[5])
local REFUSED = {a = 'amount_out_of_range', q = 'quantity_out_of_range'}
local WATERMARK, PRUNE_AT = '@' .. source, '.'
local PRUNE_SLICES = 4

-- Lua numbers print as 1.7e+12 through tostring; Redis needs plain integers.
local function int(n) return string.format('%d', n) end

-- Rewrites a hash of one counter per field (earlier versions) as packed fields: slot(field)
-- gives the packed field's name and the counter's position in its value.
local function repack(key, slot)
  local fields = redis.call('HGETALL', key)
  if #fields == 0 then return end
  local packed, names = {}, {}
  for i = 1, #fields, 2 do
    local name, position = slot(fields[i])
    if not packed[name] then
      packed[name] = {}
      names[#names + 1] = name
    end
    packed[name][position] = tonumber(fields[i + 1])
  end
  redis.call('DEL', key)
  for _, name in ipairs(names) do
    local values = packed[name]
    local parts = {}
    for position = 1, table.maxn(values) do parts[position] = int(values[position] or 0) end
    redis.call('HSET', key, name, table.concat(parts, ':'))
  end
end

local PREFIXED = {o = 1, q = 2, a = 3}
local function prefixed(field) return string.sub(field, 3), PREFIXED[string.sub(field, 1, 1)] end
local function day_field(field) return 'c' .. string.sub(field, 2), string.sub(field, 1, 1) == 'c' and 1 or 2 end

-- Earlier versions: a set of ids (no content), then an unbounded hash of id -> digest, with
-- the watermarks in a key of their own (which every customer they applied an event for has)
-- and one counter per field. Their ids are pruned below (they carry no arrival); the
-- watermarks still make replays of what they applied a no-op.
if redis.call('EXISTS', legacy_offsets) == 1 then
  if redis.call('TYPE', seen).ok == 'set' then redis.call('DEL', seen) end
  local moved = redis.call('HGETALL', legacy_offsets)
  for i = 1, #moved, 2 do redis.call('HSET', seen, '@' .. moved[i], moved[i + 1]) end
  redis.call('DEL', legacy_offsets)
  repack(days, day_field)
  repack(cats, prefixed)
  repack(skus, prefixed)
end

-- Adds deltas to the counters packed in one field.
local function add(key, name, deltas)
  local stored = redis.call('HGET', key, name)
  local values = {}
  if stored then
    for value in string.gmatch(stored, '[^:]+') do values[#values + 1] = tonumber(value) end
  end
  local parts = {}
  for i, delta in ipairs(deltas) do parts[i] = int((values[i] or 0) + delta) end
  redis.call('HSET', key, name, table.concat(parts, ':'))
end

-- Counter increments are summed here and written once per field at the end, and the
-- profile's times and totals read once: a call costs few Redis commands per event.
local increments = {[profile] = {}, [chans] = {}}
local function incr(key, field, delta)
  local fields = increments[key]
  fields[field] = (fields[field] or 0) + delta
end

local marks = redis.call('HMGET', seen, WATERMARK, PRUNE_AT)
local watermark = tonumber(marks[1] or '-1')
local prune_at = tonumber(marks[2] or '-1')
local stored = redis.call('HMGET', profile, 'maxday', 'fs', 'ls', 'fp', 'lp', 'pa', 'la', 'lq')
local times = {maxday = tonumber(stored[1] or '-1'), fs = tonumber(stored[2]), ls = tonumber(stored[3]),
               fp = tonumber(stored[4]), lp = tonumber(stored[5])}
local totals = {pa = tonumber(stored[6] or '0'), la = tonumber(stored[7] or '0'), lq = tonumber(stored[8] or '0')}
local old_maxday = times.maxday
local changed_times = {}
local function earliest(field, ts)
  if not times[field] or ts < times[field] then times[field], changed_times[field] = ts, true end
end
local function latest(field, ts)
  if not times[field] or ts > times[field] then times[field], changed_times[field] = ts, true end
end

-- Whether a purchase would take a lifetime total past max_total: 'a' (money: the order
-- amounts 'pa', or the order lines 'la', which bound every category's amount) or 'q' (the
-- quantities 'lq', which bound every category's and sku's), else nil. Sums of doubles
-- round monotonically, so the comparison is exact at the bound.
local function over_limit(cents, line_cents, qty)
  if totals.pa + cents > max_total or totals.la + line_cents > max_total then return 'a' end
  if totals.lq + qty > max_total then return 'q' end
  return nil
end

-- What an id's entry says as of `arrival`: its stored content (digest, or '!' .. code .. digest),
-- or nil when the id is not remembered (never seen, arrived a window or more before, or legacy).
local function remembered(entry, arrival)
  if not entry then return nil end
  local at, content = string.match(entry, '^(%d+):(.*)$')
  if not at or arrival - tonumber(at) >= window then return nil end
  return content
end

local newest_offset = watermark
local newest_arrival = -1
local applied = 0
local refused = {}

local function refuse(position, reason)
  refused[#refused + 1] = position
  refused[#refused + 1] = reason
end

-- An id seen before: silent when the content is the same, else refused.
local function seen_again(position, content, digest)
  if content == digest then return end
  if string.sub(content, 1, 1) == '!' and string.sub(content, 3) == digest then
    refuse(position, REFUSED[string.sub(content, 2, 2)])
  else
    refuse(position, 'conflicting_duplicate')
  end
end

-- A purchase's order lines per category and sku, each counted once per order
-- (tags like TP2 = bought twice): {names in order, name -> {1, qty, cents}}.
local function order_lines(items)
  local by_cat, by_sku, cat_names, sku_names = {}, {}, {}, {}
  local line_cents, line_qty = 0, 0
  for i = 1, #items, 4 do
    local cat, sku, qty, item_cents = items[i], items[i + 1], items[i + 2], items[i + 3]
    line_cents = line_cents + item_cents
    line_qty = line_qty + qty
    if not by_cat[cat] then
      by_cat[cat] = {1, 0, 0}
      cat_names[#cat_names + 1] = cat
    end
    by_cat[cat][2] = by_cat[cat][2] + qty
    by_cat[cat][3] = by_cat[cat][3] + item_cents
    if not by_sku[sku] then
      by_sku[sku] = {1, 0}
      sku_names[#sku_names + 1] = sku
    end
    by_sku[sku][2] = by_sku[sku][2] + qty
  end
  return {cat_names, by_cat, sku_names, by_sku, line_cents, line_qty}
end

for position, e in ipairs(events) do
  local id_key, offset, digest, arrival, kind, day, ts = e[1], e[2], e[3], e[4], e[5], e[6], e[7]
  if arrival > newest_arrival then newest_arrival = arrival end
  local content = remembered(redis.call('HGET', seen, id_key), arrival)
  local new = offset > watermark and not content
  if content then seen_again(position, content, digest) end
  local lines = new and kind == 'p' and order_lines(e[12])
  local over = lines and over_limit(e[11], lines[5], lines[6])
  if new then
    redis.call('HSET', seen, id_key, int(arrival) .. ':' .. (over and ('!' .. over) or '') .. digest)
  end
  if over then
    refuse(position, REFUSED[over])
  elseif new then
    applied = applied + 1
    if offset > newest_offset then newest_offset = offset end
    if day > times.maxday then times.maxday, changed_times.maxday = day, true end
    local channel = e[8]
    incr(chans, channel, 1)
    earliest('fs', ts)
    latest('ls', ts)
    if kind == 'p' then
      local cents = e[11]
      incr(profile, 'pc', 1)
      incr(profile, 'pa', cents)
      incr(profile, e[9] == 1 and 'pwe' or 'pwd', 1)
      incr(chans, 'p:' .. channel, 1)
      earliest('fp', ts)
      latest('lp', ts)
      -- Buckets older than the retention horizon would be pruned at once; lifetime still counts them.
      if day > times.maxday - retention then add(days, 'c' .. int(day), {1, cents}) end
      local cat_names, by_cat, sku_names, by_sku, line_cents, line_qty = unpack(lines)
      for _, cat in ipairs(cat_names) do add(cats, cat, by_cat[cat]) end
      for _, sku in ipairs(sku_names) do add(skus, sku, by_sku[sku]) end
      incr(profile, 'la', line_cents)
      incr(profile, 'lq', line_qty)
      totals.pa, totals.la, totals.lq = totals.pa + cents, totals.la + line_cents, totals.lq + line_qty
    elseif kind == 'c' then
      incr(profile, 'nc', 1)
      incr(profile, 'c:' .. e[10], 1)
    elseif kind == 'b' then
      incr(profile, 'nb', 1)
    else
      incr(profile, 'ni', 1)
      incr(profile, 'k:' .. e[10], 1)
    end
  end
end

for key, fields in pairs(increments) do
  for field, delta in pairs(fields) do redis.call('HINCRBY', key, field, int(delta)) end
end
local profile_times = {}
for field in pairs(changed_times) do
  profile_times[#profile_times + 1] = field
  profile_times[#profile_times + 1] = int(times[field])
end
if #profile_times > 0 then redis.call('HSET', profile, unpack(profile_times)) end
if newest_offset > watermark then redis.call('HSET', seen, WATERMARK, int(newest_offset)) end

-- Forget the ids that arrived a window or more before the newest arrival. A pass reads the
-- whole hash, so it runs at most PRUNE_SLICES times a window per user: an id stays in the
-- hash for less than 1 + 1 / PRUNE_SLICES windows.
if newest_arrival >= prune_at then
  local entries = redis.call('HGETALL', seen)
  for i = 1, #entries, 2 do
    local name = entries[i]
    if name ~= PRUNE_AT and string.sub(name, 1, 1) ~= '@' and not remembered(entries[i + 1], newest_arrival) then
      redis.call('HDEL', seen, name)
    end
  end
  redis.call('HSET', seen, PRUNE_AT, int(newest_arrival + math.ceil(window / PRUNE_SLICES)))
end

if times.maxday > old_maxday then
  -- Retention follows event time: drop buckets that fell behind the newest event's day.
  local horizon = times.maxday - retention
  local stale = {}
  for _, field in ipairs(redis.call('HKEYS', days)) do
    if tonumber(string.sub(field, 2)) <= horizon then stale[#stale + 1] = field end
  end
  if #stale > 0 then redis.call('HDEL', days, unpack(stale)) end
end
return {applied, refused}
