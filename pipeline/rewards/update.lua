-- Commit a decision taken on a snapshot of one user's rewards (points spend,
-- adjustment and expiry, cash withdrawal, fulfilment address): apply the writes
-- only if every field read is unchanged (compare-and-set), once per dedupe key.
-- KEYS: the user's reward keys (see grant.lua)
-- ARGV: 1 JSON {"dedupe": key, "checks": [[key index, field, expected or null = absent]],
--               "hset": [[key index, field, value]], "zadd": [[key index, score, member]],
--               "zrem": [[key index, member]], "push": [[key index, value]]}
-- Returns 1 applied, 0 conflict (re-read and decide again), -1 already applied.
local u = cjson.decode(ARGV[1])
local dedupe = KEYS[10]
if redis.call('HEXISTS', dedupe, u.dedupe) == 1 then return -1 end
for _, c in ipairs(u.checks) do
  local current = redis.call('HGET', KEYS[c[1]], c[2])
  if c[3] == cjson.null then
    if current then return 0 end
  elseif current ~= c[3] then
    return 0
  end
end
for _, w in ipairs(u.hset) do redis.call('HSET', KEYS[w[1]], w[2], w[3]) end
for _, z in ipairs(u.zadd) do redis.call('ZADD', KEYS[z[1]], z[2], z[3]) end
for _, z in ipairs(u.zrem) do redis.call('ZREM', KEYS[z[1]], z[2]) end
for _, p in ipairs(u.push) do redis.call('RPUSH', KEYS[p[1]], p[2]) end
redis.call('HSET', dedupe, u.dedupe, 1)
return 1
