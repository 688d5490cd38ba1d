-- Redeem coupons named on a purchase, each at most once: a coupon moves from
-- active to redeemed only if it is still active (compare-and-set); otherwise the
-- rejection record is written instead. Every outcome is written once per
-- (event, coupon), so a replayed purchase changes nothing.
-- KEYS: the user's reward keys (see grant.lua)
-- ARGV: 1 JSON [{"dedupe": key, "item": coupon id or "" (already rejected), "detail": redemption JSON,
--               "ok": record, "fail": record written when the coupon is no longer active}, ...]
-- Returns the records written.
local status, outbox, dedupe, redemptions = KEYS[4], KEYS[9], KEYS[10], KEYS[11]
local written = {}
for _, op in ipairs(cjson.decode(ARGV[1])) do
  if redis.call('HSETNX', dedupe, op.dedupe, 1) == 1 then
    local record = op.ok
    if op.item ~= '' then
      if redis.call('HGET', status, op.item) == 'active' then
        redis.call('HSET', status, op.item, 'redeemed')
        redis.call('HSET', redemptions, op.item, op.detail)
      else
        record = op.fail
      end
    end
    redis.call('RPUSH', outbox, record)
    written[#written + 1] = record
  end
end
return written
