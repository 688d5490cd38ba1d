-- Reserve what one grant takes from its campaign, atomically: budget, inventory
-- and coupons popped from universal-code pools. All or nothing, so a gift pack
-- with one component out of stock takes nothing.
-- KEYS (all share the campaign's hash tag {rw:c:<campaign>}):
--   1 campaign hash (spent, denied:<why>, minted:<prize>)  2 reservations (idempotency key -> JSON)
--   3 stock used (prize -> units)  4.. one code pool (set) per entry of needs.pools, same order
-- ARGV: 1 idempotency key  2 cost in cents  3 budget in cents (-1 = unlimited)
--   4 JSON {"stock": [[prize, units, limit], ...], "pools": [[prize, count, code, size], ...]}
-- Returns {"ok", reservation} | {"held", reservation} (this key reserved before: a replay)
--   | {"budget"} | {"stock", prize} | {"pool", prize}
-- A reservation is {"cost": n, "stock": [[prize, units, limit]...], "codes": {prize: [code...]}}.
local camp, res, stock = KEYS[1], KEYS[2], KEYS[3]
local key, cost, budget = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local needs = cjson.decode(ARGV[4])

local held = redis.call('HGET', res, key)
if held then return {'held', held} end

for _, s in ipairs(needs.stock) do
  if tonumber(redis.call('HGET', stock, s[1]) or '0') + s[2] > s[3] then
    redis.call('HINCRBY', camp, 'denied:stock', 1)
    return {'stock', s[1]}
  end
end
for i, p in ipairs(needs.pools) do
  local pool, prize, count, code, size = KEYS[3 + i], p[1], p[2], p[3], p[4]
  -- The pool is minted once, on first use: CODE-001 .. CODE-<size> (at least 3 digits).
  if redis.call('HSETNX', camp, 'minted:' .. prize, size) == 1 then
    local width = math.max(3, string.len(string.format('%d', size)))
    local batch = {}
    for n = 1, size do
      batch[#batch + 1] = string.format('%s-%0' .. width .. 'd', code, n)
      if #batch == 1000 or n == size then  -- unpack() takes a few thousand values at most
        redis.call('SADD', pool, unpack(batch))
        batch = {}
      end
    end
  end
  if redis.call('SCARD', pool) < count then
    redis.call('HINCRBY', camp, 'denied:pool', 1)
    return {'pool', prize}
  end
end
-- Budget last: an empty pool or shelf is the more useful answer when both ran out.
if budget >= 0 and tonumber(redis.call('HGET', camp, 'spent') or '0') + cost > budget then
  redis.call('HINCRBY', camp, 'denied:budget', 1)
  return {'budget'}
end

local codes = {}
for i, p in ipairs(needs.pools) do
  codes[p[1]] = redis.call('SPOP', KEYS[3 + i], p[2])  -- random unissued coupons
end
redis.call('HINCRBY', camp, 'spent', cost)
for _, s in ipairs(needs.stock) do redis.call('HINCRBY', stock, s[1], s[2]) end
local reservation = cjson.encode({cost = cost, stock = needs.stock, codes = codes})
redis.call('HSET', res, key, reservation)
return {'ok', reservation}
