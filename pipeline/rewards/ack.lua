-- Drop delivered records from the head of a user's outbox. Only records still
-- at the head and listed here go, so two relays acknowledging the same batch
-- never drop a record the other has not delivered.
-- KEYS: 1 the user's outbox   ARGV: the delivered records, exactly as read
-- Returns how many records remain.
local outbox = KEYS[1]
local delivered = {}
for i = 1, #ARGV do delivered[ARGV[i]] = true end
while true do
  local head = redis.call('LINDEX', outbox, 0)
  if not head or not delivered[head] then break end
  redis.call('LPOP', outbox)
end
return redis.call('LLEN', outbox)
