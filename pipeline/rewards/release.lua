-- Give back a reservation whose user-side write was refused (per-user limit,
-- a concurrent referral step-up): budget, inventory and popped coupons return.
-- KEYS: as reserve.lua (4.. the pools named in ARGV[2], same order)
-- ARGV: 1 idempotency key  2 JSON [pool prize, ...]
-- Returns 1 when released, 0 when nothing was reserved under the key.
local camp, res, stock = KEYS[1], KEYS[2], KEYS[3]
local held = redis.call('HGET', res, ARGV[1])
if not held then return 0 end
local r = cjson.decode(held)
redis.call('HINCRBY', camp, 'spent', -r.cost)
for _, s in ipairs(r.stock) do redis.call('HINCRBY', stock, s[1], -s[2]) end
for i, prize in ipairs(cjson.decode(ARGV[2])) do
  local codes = r.codes[prize]
  if codes and #codes > 0 then redis.call('SADD', KEYS[3 + i], unpack(codes)) end
end
redis.call('HDEL', res, ARGV[1])
return 1
