-- Write one grant into a user's wallet, at most once per idempotency key
-- (rule, user, trigger), within the rule's per-user limit. A referral step-up
-- also cancels the coupon it replaces, provided the user's referral state is
-- still the one the decision was made on (compare-and-set).
-- KEYS: the user's reward keys (RewardKeys in ledger.py beside this script, one hash tag):
--   1 grants  2 per-rule counts  3 items  4 item status  5 points remaining  6 points expiry
--   7 points ledger  8 referral state  9 outbox  10 dedupe  11 redemptions  12 account
-- ARGV: 1 idempotency key  2 rule  3 per-user limit (0 = step-up: neither checked nor counted)
--   4 JSON {"stored": text kept under the key, "records": [record...], "items": [[id, json, status]],
--           "lots": [[id, points, expiry score]], "ledger": [entry...],
--           "referral": null | {"expect": state or "", "cancel": item id or "", "state": new state}}
-- Returns {"granted"} | {"duplicate", stored} | {"limit"} | {"conflict"}
local grants, counts, items, status, remaining, expiry, ledger, referral, outbox =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local key, rule, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])

local stored = redis.call('HGET', grants, key)
if stored then return {'duplicate', stored} end
if limit > 0 and tonumber(redis.call('HGET', counts, rule) or '0') >= limit then return {'limit'} end

local g = cjson.decode(ARGV[4])
local ref = g.referral
if ref ~= cjson.null then
  if (redis.call('HGET', referral, rule) or '') ~= ref.expect then return {'conflict'} end
  if ref.cancel ~= '' then
    if redis.call('HGET', status, ref.cancel) ~= 'active' then return {'conflict'} end
    redis.call('HSET', status, ref.cancel, 'cancelled')  -- never mutate the coupon itself
  end
  redis.call('HSET', referral, rule, ref.state)
end
for _, it in ipairs(g.items) do
  redis.call('HSET', items, it[1], it[2])
  redis.call('HSET', status, it[1], it[3])
end
for _, lot in ipairs(g.lots) do
  redis.call('HSET', remaining, lot[1], lot[2])
  redis.call('ZADD', expiry, lot[3], lot[1])
end
for _, entry in ipairs(g.ledger) do redis.call('RPUSH', ledger, entry) end
for _, record in ipairs(g.records) do redis.call('RPUSH', outbox, record) end
if limit > 0 then redis.call('HINCRBY', counts, rule, 1) end
redis.call('HSET', grants, key, g.stored)
return {'granted'}
