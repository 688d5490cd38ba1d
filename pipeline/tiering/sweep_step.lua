-- Mark a means-shift sweep finished (see pipeline/tiering/population.py).
-- KEYS[1]: the population snapshot hash; ARGV[1]: id of the snapshot whose sweep finished.
-- A newer snapshot taken meanwhile keeps its own pending sweep.
if redis.call('HGET', KEYS[1], 'id') == ARGV[1] then return redis.call('HDEL', KEYS[1], 'sweep') end
return 0
