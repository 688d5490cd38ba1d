-- Claim a user's tier-change records up to a seq for publication.
-- KEYS[1]: the user's tier hash. ARGV[1]: highest seq to publish, ARGV[2]: now (ms).
-- Returns the seq claimed before: the caller publishes only (previous, ARGV[1]],
-- so two publishers (timer and ingest, or two workers) never send the same record.
local previous = tonumber(redis.call('HGET', KEYS[1], 'pubseq') or '0')
local upto = tonumber(ARGV[1])
if upto > previous then
  redis.call('HSET', KEYS[1], 'pubseq', ARGV[1], 'pub_ms', ARGV[2])
end
return previous
