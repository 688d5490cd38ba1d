-- The tier-change outbox (see pipeline/tiering/outbox.py). ARGV[1] names the operation; each
-- call is one atomic decision on keys of ONE hash tag: "claim" and "ack" on a user's tag
-- ({u:ID}), "unlist" on one population shard's tag ({tf:t:N}).
local op = ARGV[1]

if op == 'claim' then
  -- KEYS: the user's tier hash; ARGV: 2 highest seq to publish, 3 now (ms).
  -- Returns the seq claimed before: the caller publishes only (previous, ARGV[2]],
  -- so two publishers (timer and ingest, or two workers) never send the same record.
  local previous = tonumber(redis.call('HGET', KEYS[1], 'pubseq') or '0')
  if tonumber(ARGV[2]) > previous then
    redis.call('HSET', KEYS[1], 'pubseq', ARGV[2], 'pub_ms', ARGV[3])
  end
  return previous

elseif op == 'ack' then
  -- KEYS: outbox; ARGV[2]: highest change seq published. Drops published records from the
  -- head; acknowledging twice is harmless. Returns how many were dropped.
  local upto, dropped = tonumber(ARGV[2]), 0
  while true do
    local head = redis.call('LINDEX', KEYS[1], 0)
    if not head or cjson.decode(head).seq > upto then break end
    redis.call('LPOP', KEYS[1])
    dropped = dropped + 1
  end
  return dropped

elseif op == 'unlist' then
  -- KEYS: outbox index of the user's shard; ARGV: 2 user, 3 acknowledged seq. The user
  -- stays listed when a later change was appended (its delta set a higher score).
  local listed = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[2]) or '0')
  if listed <= tonumber(ARGV[3]) then return redis.call('ZREM', KEYS[1], ARGV[2]) end
  return 0
end
return redis.error_reply('outbox.lua: unknown operation ' .. tostring(op))
