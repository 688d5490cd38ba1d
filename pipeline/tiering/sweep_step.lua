-- Record a slice of a means-shift sweep as done (see pipeline/tiering/population.py).
-- KEYS[1]: the population snapshot hash; ARGV: 1 id of the snapshot swept, 2 where the slice
-- started ('' = the beginning), 3 where it ended ('' = the sweep is finished).
-- Only from where the sweep stood: a newer snapshot (which restarts the sweep) or another
-- worker's slice recorded meanwhile wins, and this slice changes nothing.
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
if (redis.call('HGET', KEYS[1], 'sweep_at') or '') ~= ARGV[2] then return 0 end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], 'sweep', 'sweep_at')
else
  redis.call('HSET', KEYS[1], 'sweep_at', ARGV[3])
end
return 1
