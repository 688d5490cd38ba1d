-- A user's two outboxes after a publishing round (see pipeline/outboxes.py): ONE call per
-- user, on keys of the user's hash tag. KEYS: 1 tier-change outbox, 2 reward outbox.
-- ARGV: 1 how many change records were sent (the outbox's head when read), 2 the highest
-- seq among them, 3.. the reward records sent, exactly as read.
-- Drops what was sent from each head, and only that: a second publisher acknowledging the
-- same records (a lane's old owner, a read-back) drops nothing the other has not sent.
-- Returns {change records left, reward records left}.
local changes, rewards = KEYS[1], KEYS[2]
local sent, upto = tonumber(ARGV[1]), tonumber(ARGV[2])

if sent > 0 then
  -- Seqs ascend along the list: when the last record sent is where it was read, the
  -- whole head up to it goes at once; otherwise (acknowledged meanwhile) record by record.
  local last = redis.call('LINDEX', changes, sent - 1)
  if last and cjson.decode(last).seq == upto then
    redis.call('LTRIM', changes, sent, -1)
  else
    while true do
      local head = redis.call('LINDEX', changes, 0)
      if not head or cjson.decode(head).seq > upto then break end
      redis.call('LPOP', changes)
    end
  end
end

if #ARGV > 2 then
  local delivered = {}
  for i = 3, #ARGV do delivered[ARGV[i]] = true end
  local head = redis.call('LRANGE', rewards, 0, #ARGV - 3)
  local drop = 0
  while drop < #head and delivered[head[drop + 1]] do drop = drop + 1 end
  if drop > 0 then redis.call('LTRIM', rewards, drop, -1) end
end

return {redis.call('LLEN', changes), redis.call('LLEN', rewards)}
