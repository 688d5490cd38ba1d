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
  -- KEYS: outbox index of one shard; ARGV: 2.. pairs of a user of the shard and their
  -- acknowledged seq. A user stays listed when a later change was appended (its delta set
  -- a higher score). Returns how many left the index.
  local removed = 0
  for i = 2, #ARGV, 2 do
    local listed = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]) or '0')
    if listed <= tonumber(ARGV[i + 1]) then removed = removed + redis.call('ZREM', KEYS[1], ARGV[i]) end
  end
  return removed
end
return redis.error_reply('outbox.lua: unknown operation ' .. tostring(op))
