-- The tier-change outbox (see pipeline/tiering/outbox.py). ARGV[1] names the operation; each
-- call is one atomic decision on keys of ONE hash tag: "ack" on a user's tag ({u:ID}),
-- "unlist" on one population shard's tag ({tf:t:N}).
local op = ARGV[1]

if op == 'ack' then
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
