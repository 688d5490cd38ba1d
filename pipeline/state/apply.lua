-- Apply a batch of one user's events atomically, each event once.
-- KEYS (all share the user's hash tag, so this runs unchanged on Redis Cluster):
--   1 profile  2 day buckets  3 categories  4 skus  5 channels  6 dedupe  7 legacy offsets  8 orders
--   2, 3 and 4 keep one field per day / category / sku, its counters packed in one value
--   (summary.py reads them): 'c' .. day -> purchases:cents, category -> orders:qty:cents,
--   sku -> orders:qty.
--   6 is a hash of bounded size: '@' .. source -> offset watermark of that source partition,
--   '.' -> the arrival minute of the next pruning, and one field per id remembered:
--   id key -> arrival minute .. ':' .. digest (refused: .. ':!' .. code .. digest).
--   7 is the watermark hash of earlier versions, moved into 6 on first touch.
--   8 keeps one field per order of the refund window (order key -> ts:cents, then :refunded cents:refunds
--   once refunded), or per order refunded before it arrived (-> ?:newest refund day:refunded cents:refunds),
--   numbers in base 36 to keep it small: what a refund needs to lower its order's day and tell a full
--   refund. Entries older than the refund window (ARGV[6] days before the newest event) are pruned.
-- ARGV: 1 source ("topic:partition")  2 retention in days  3 the largest total kept (summary.MAX_TOTAL)
--   4 the dedupe window in minutes  6 the refund window in days  5 JSON array of compact events:
--   {id_key, offset, digest, arrival_min, kind, day, ts_ms, channel, weekend, detail, amount_cents, items}
--   kind: "p" purchase, "r" refund, "c" cart, "b" browse, "i" interaction; detail: cart action /
--   interaction kind / order key (purchase, refund); items (purchase only): flat {category, sku, qty,
--   amount_cents, ...}
-- Returns {applied, {position, reason, ...}}: how many events were applied, and each event refused
-- (1-based position in ARGV[5]) with its reason:
--   conflicting_duplicate  the id was applied (or refused) within the window with other content
--   amount_out_of_range / quantity_out_of_range  a lifetime total would pass ARGV[3]; the id is kept,
--     marked refused, so the same event again within the window is refused again
--   refund_exceeds_order  the order's refunds would pass its amount (refused the same way)
-- A refund lowers its order's amount (lifetime, and the order's day while retained); the refund
-- that completes a full refund also takes the order out of the purchase counts, and the first and
-- last purchase fall back to the remaining orders. A refund before its order waits in 8 and is
-- applied when the order arrives (capped at the order's amount), so the result does not depend
-- on the arrival order. Profile 'rv' counts refunds applied and orders taken out, so that nb + nc + ni +
-- pc + rv grows by one with every event applied (tiering reads it as the state's version).
-- Each event once: an offset at or below its source partition's watermark (a replay) is skipped
-- whatever its age; a new offset whose id arrived less than the window before is a resend: skipped
-- silently with the same content, refused with other content. An id comes back later than that is new.
local profile, days, cats, skus, chans, seen, legacy_offsets, orders =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local source = ARGV[1]
local retention = tonumber(ARGV[2])
local max_total = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local events = cjson.decode(ARGV[5])
local refund_window = tonumber(ARGV[6] or ARGV[2])
local DAY_MS = 86400000
local REFUSED = {a = 'amount_out_of_range', q = 'quantity_out_of_range', r = 'refund_exceeds_order'}
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

-- Adds deltas to the counters packed in one field; a field whose counters all reach 0 (a day
-- whose orders were all refunded) is dropped.
local function add(key, name, deltas)
  local stored = redis.call('HGET', key, name)
  local values = {}
  if stored then
    for value in string.gmatch(stored, '[^:]+') do values[#values + 1] = tonumber(value) end
  end
  local parts, empty = {}, true
  for i, delta in ipairs(deltas) do
    parts[i] = int((values[i] or 0) + delta)
    if parts[i] ~= '0' then empty = false end
  end
  if empty then redis.call('HDEL', key, name) else redis.call('HSET', key, name, table.concat(parts, ':')) end
end

local DIGITS = '0123456789abcdefghijklmnopqrstuvwxyz'
local function base36(n)
  local text = ''
  repeat
    local digit = n % 36
    text = string.sub(DIGITS, digit + 1, digit + 1) .. text
    n = (n - digit) / 36
  until n == 0
  return text
end

-- An order's entry in 8: {known, day, ts, cents, refunded, n} for an order that arrived, else
-- {day, refunded, n} of the refunds waiting for it (refunded and n 0 when none).
local function parse_order(entry)
  if not entry then return {refunded = 0, n = 0} end
  local v = {}
  for value in string.gmatch(entry, '[^:]+') do v[#v + 1] = value end
  if v[1] == '?' then return {day = tonumber(v[2], 36), refunded = tonumber(v[3], 36), n = tonumber(v[4], 36)} end
  local ts = tonumber(v[1], 36)
  return {known = true, ts = ts, day = math.floor(ts / DAY_MS), cents = tonumber(v[2], 36),
          refunded = tonumber(v[3] or '0', 36), n = tonumber(v[4] or '0', 36)}
end
local function write_order(key, o)
  local parts = o.known and {o.ts, o.cents} or {'?', o.day, o.refunded, o.n}
  if o.known and o.n > 0 then parts[3], parts[4] = o.refunded, o.n end
  for i, value in ipairs(parts) do parts[i] = value == '?' and value or base36(value) end
  redis.call('HSET', orders, key, table.concat(parts, ':'))
end
-- Whether the order counts as a purchase: not refunded in full (a zero-amount order is refunded
-- in full by any refund).
local function live(o) return o.n == 0 or o.refunded < o.cents end

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
local stored = redis.call('HMGET', profile, 'maxday', 'fs', 'ls', 'fp', 'lp', 'pa', 'la', 'lq', 'pc')
local times = {maxday = tonumber(stored[1] or '-1'), fs = tonumber(stored[2]), ls = tonumber(stored[3]),
               fp = tonumber(stored[4]), lp = tonumber(stored[5])}
local totals = {pa = tonumber(stored[6] or '0'), la = tonumber(stored[7] or '0'), lq = tonumber(stored[8] or '0'),
                pc = tonumber(stored[9] or '0')}
local old_maxday = times.maxday
local changed_times = {}
local function earliest(field, ts)
  if not times[field] or ts < times[field] then times[field], changed_times[field] = ts, true end
end
local function latest(field, ts)
  if not times[field] or ts > times[field] then times[field], changed_times[field] = ts, true end
end

-- The order at `ts` no longer counts: the first and last purchase fall back to the retained
-- orders that still count. With none left and no purchase counted, the customer has none;
-- with purchases counted only beyond the retention, the times stay.
local function fall_back(ts)
  if times.lp ~= ts and times.fp ~= ts then return end
  local first, last
  local entries = redis.call('HGETALL', orders)
  for i = 2, #entries, 2 do
    local o = parse_order(entries[i])
    if o.known and live(o) then
      if not first or o.ts < first then first = o.ts end
      if not last or o.ts > last then last = o.ts end
    end
  end
  if not last and totals.pc > 0 then return end
  if times.fp == ts then times.fp, changed_times.fp = first, true end
  if times.lp == ts then times.lp, changed_times.lp = last, true end
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
for _, e in ipairs(events) do
  if e[4] > newest_arrival then newest_arrival = e[4] end
end
-- An id that arrived a window or more before the newest arrival seen (this call's, or the last
-- pruning's) is one the next pruning drops: it is remembered in `fleeting` for this call only,
-- never written. So a burst of a customer's history (a backlog, a backfill, spread over the
-- input topics) leaves only the window's ids, and the hash Redis's compact encoding.
local pruning = newest_arrival >= prune_at
local seen_newest = math.max(newest_arrival, prune_at - math.ceil(window / PRUNE_SLICES))
local fleeting = {}
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
  local content = remembered(fleeting[id_key] or redis.call('HGET', seen, id_key), arrival)
  local new = offset > watermark and not content
  if content then seen_again(position, content, digest) end
  local lines = new and kind == 'p' and order_lines(e[12])
  local order = new and (kind == 'p' or kind == 'r') and parse_order(redis.call('HGET', orders, e[10]))
  local over = lines and over_limit(e[11], lines[5], lines[6])
  if kind == 'r' and order and order.known and order.refunded + e[11] > order.cents then over = 'r' end
  if new then
    local entry = int(arrival) .. ':' .. (over and ('!' .. over) or '') .. digest
    if seen_newest - arrival >= window then
      fleeting[id_key] = entry
    else
      redis.call('HSET', seen, id_key, entry)
    end
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
      -- Refunds that arrived first: capped at the amount (their excess cannot be dead-lettered any more).
      local refunded = math.min(order.refunded, cents)
      local counts = order.known or order.n == 0 or refunded < cents
      local net = order.known and cents or cents - refunded
      incr(profile, 'pa', net)
      incr(profile, e[9] == 1 and 'pwe' or 'pwd', 1)
      incr(chans, 'p:' .. channel, 1)
      if counts then
        incr(profile, 'pc', 1)
        totals.pc = totals.pc + 1
        earliest('fp', ts)
        latest('lp', ts)
      else
        incr(profile, 'rv', 1)
      end
      if not order.known then
        if order.n > 0 then
          incr(profile, 'nr', order.n)
          incr(profile, 'ra', refunded)
        end
        write_order(e[10], {known = true, day = day, ts = ts, cents = cents, refunded = refunded, n = order.n})
      end
      -- Buckets older than the retention horizon would be pruned at once; lifetime still counts them.
      if day > times.maxday - retention then add(days, 'c' .. int(day), {counts and 1 or 0, net}) end
      local cat_names, by_cat, sku_names, by_sku, line_cents, line_qty = unpack(lines)
      for _, cat in ipairs(cat_names) do add(cats, cat, by_cat[cat]) end
      for _, sku in ipairs(sku_names) do add(skus, sku, by_sku[sku]) end
      incr(profile, 'la', line_cents)
      incr(profile, 'lq', line_qty)
      totals.pa, totals.la, totals.lq = totals.pa + net, totals.la + line_cents, totals.lq + line_qty
    elseif kind == 'r' then
      local cents = e[11]
      incr(profile, 'rv', 1)
      if order.known then
        local counted = live(order)
        order.refunded, order.n = order.refunded + cents, order.n + 1
        write_order(e[10], order)
        local ends = counted and not live(order)
        incr(profile, 'pa', -cents)
        incr(profile, 'nr', 1)
        incr(profile, 'ra', cents)
        totals.pa = totals.pa - cents
        if order.day > times.maxday - retention then add(days, 'c' .. int(order.day), {ends and -1 or 0, -cents}) end
        if ends then
          incr(profile, 'pc', -1)
          incr(profile, 'rv', 1)
          totals.pc = totals.pc - 1
          fall_back(order.ts)
        end
      else
        order.refunded, order.n, order.day = order.refunded + cents, order.n + 1, math.max(order.day or day, day)
        write_order(e[10], order)
      end
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
local profile_times, gone = {}, {}
for field in pairs(changed_times) do
  if times[field] then
    profile_times[#profile_times + 1] = field
    profile_times[#profile_times + 1] = int(times[field])
  else
    gone[#gone + 1] = field
  end
end
if #profile_times > 0 then redis.call('HSET', profile, unpack(profile_times)) end
if #gone > 0 then redis.call('HDEL', profile, unpack(gone)) end
if newest_offset > watermark then redis.call('HSET', seen, WATERMARK, int(newest_offset)) end

-- Forget the ids that arrived a window or more before the newest arrival. A pass reads the
-- whole hash, so it runs at most PRUNE_SLICES times a window per user: an id stays in the
-- hash for less than 1 + 1 / PRUNE_SLICES windows.
if pruning then
  local entries = redis.call('HGETALL', seen)
  local kept = {}
  for i = 1, #entries, 2 do
    local name = entries[i]
    if name ~= PRUNE_AT and string.sub(name, 1, 1) ~= '@' and not remembered(entries[i + 1], newest_arrival) then
      redis.call('HDEL', seen, name)
    else
      kept[#kept + 1] = i
    end
  end
  -- A hash that once left the compact encoding (a burst of ids within the window) keeps the
  -- larger one after pruning: written afresh once the pass dropped at least half of it (so
  -- the rewrite costs no more than the deletes), Redis encodes it compactly again if it fits.
  if #kept <= #entries / 4 and redis.call('OBJECT', 'ENCODING', seen) == 'hashtable' then
    redis.call('DEL', seen)
    for _, i in ipairs(kept) do redis.call('HSET', seen, entries[i], entries[i + 1]) end
  end
  redis.call('HSET', seen, PRUNE_AT, int(newest_arrival + math.ceil(window / PRUNE_SLICES)))
end

if times.maxday > old_maxday then
  local old_orders = {}
  local entries = redis.call('HGETALL', orders)
  for i = 1, #entries, 2 do
    if parse_order(entries[i + 1]).day <= times.maxday - refund_window then old_orders[#old_orders + 1] = entries[i] end
  end
  if #old_orders > 0 then redis.call('HDEL', orders, unpack(old_orders)) end
  -- Retention follows event time: drop buckets that fell behind the newest event's day.
  local horizon = times.maxday - retention
  local stale = {}
  for _, field in ipairs(redis.call('HKEYS', days)) do
    if tonumber(string.sub(field, 2)) <= horizon then stale[#stale + 1] = field end
  end
  if #stale > 0 then redis.call('HDEL', days, unpack(stale)) end
end
return {applied, refused}
