-- The tier commit protocol (see pipeline/tiering/store.py for the design). ARGV[1] names the
-- operation; each call is one atomic decision and touches keys of ONE hash tag only, so it
-- runs unchanged on Redis Cluster: "load", "commit", "clear" on a user's tag ({u:ID});
-- "apply" on one population shard's tag ({tf:t:N}).
local op = ARGV[1]
local NULL = cjson.null
local DIMS = {'segment', 'lifecycle', 'membership', 'aipl'}
local SCORE_DIMS = {'r', 'f', 'm'}

-- Lua numbers print as 1.7e+12 through tostring; Redis needs plain integers.
local function int(n) return string.format('%d', n) end
local function present(x) if x == NULL or x == false then return nil end return x end
local function json_or_null(x) if x == nil then return NULL end return x end

-- Events applied to the user so far: grows by one per applied event (the counters of
-- pipeline/state/apply.lua).
local function event_count(profile)
  local total = 0
  for _, v in ipairs(redis.call('HMGET', profile, 'nb', 'nc', 'ni', 'pc', 'rv')) do
    total = total + (tonumber(v) or 0)
  end
  return total
end

-- Drops a user's pending deltas the population has applied (seq at or below `applied`).
local function clear_applied(pending, applied)
  if applied <= 0 then return 0 end
  local done = {}
  for _, field in ipairs(redis.call('HKEYS', pending)) do
    if tonumber(field) <= applied then done[#done + 1] = field end
  end
  if #done > 0 then redis.call('HDEL', pending, unpack(done)) end
  return #done
end

if op == 'load' then
  -- KEYS: profile, days, categories, skus, channels, tier, paid
  -- Returns the five state hashes, {asof, nb} of the stored tiers, and the paid orders.
  -- ARGV[2]: JSON [[event_id, ts_ms, qty], ...] membership orders to record (idempotent by event id)
  for _, p in ipairs(cjson.decode(ARGV[2])) do
    redis.call('HSET', KEYS[7], p[1], int(p[2]) .. ':' .. int(p[3]))
  end
  local out = {}
  for i = 1, 5 do out[i] = redis.call('HGETALL', KEYS[i]) end
  -- Of the stored tiers only what the evaluation needs (the document is large), and the
  -- values, so that only the dimensions that change are explained.
  local tier = redis.call('HMGET', KEYS[6], 'asof', 'nb', 'v:segment', 'v:lifecycle', 'v:membership', 'v:aipl',
    'holds')
  out[6] = {'asof', tier[1] or '-1', 'nb', tier[2] or '', 'holds', tier[7] or ''}
  for i, dim in ipairs(DIMS) do
    if tier[2 + i] then
      out[6][#out[6] + 1] = 'v:' .. dim
      out[6][#out[6] + 1] = tier[2 + i]
    end
  end
  out[7] = redis.call('HGETALL', KEYS[7])
  return out

elseif op == 'commit' then
  -- KEYS: tier, outbox, pending, profile
  -- ARGV: 2 user id, 3 basis (event count read with the state), 4 as_of_ms, 5 reason,
  --   6 event time (RFC 3339), 7 JSON {segment, lifecycle, membership, aipl} (null = none),
  --   8 JSON {r, f, m} scores or null, 9 JSON {r, f, m} raw values as strings or null,
  --   10 next boundary ms ('' = none), 11 evaluation document, 12 JSON {points, repurchases,
  --   why: {dimension: explanation} of the dimensions expected to change},
  --   13 when the population snapshot evaluated against was taken, 14 the downgrade holds read
  --   with the state ('' = none), 15 the holds to store, 16 JSON [{dimension, held, at, why}]
  --   will_downgrade notices to append, 17 the highest delta seq the population has applied
  --   for this user as far as the caller knows (0: none): those deltas are cleared first
  -- Returns {status, the records it appended (JSON), pending deltas {seq, JSON, ...}, how many
  -- unacknowledged records the user has}.
  local tier, outbox, pending, profile = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
  local user, basis, as_of = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
  -- Clearing applied deltas is safe whatever the outcome below (the apply skips them anyway).
  clear_applied(pending, tonumber(ARGV[17]))
  -- Evaluated from a state that has moved on, or from an instant before the stored one:
  -- the caller re-reads and re-evaluates.
  if event_count(profile) ~= basis then return {'stale', {}, {}, 0} end
  -- Everything compared below, read in one call (all reads precede this call's writes).
  local stored = redis.call('HMGET', tier, 'asof', 'pop', 'raw', 'nb',
    'v:segment', 'v:lifecycle', 'v:membership', 'v:aipl', 's:r', 's:f', 's:m', 'holds')
  local stored_as_of = tonumber(stored[1] or '-1')
  if as_of < stored_as_of then return {'stale', {}, {}, 0} end
  -- Nor against an older population snapshot than the last commit (a sweep may have
  -- re-evaluated this user against the newer one meanwhile).
  local snapshot = tonumber(ARGV[13])
  if snapshot < tonumber(stored[2] or '-1') then return {'stale', {}, {}, 0} end
  -- Nor from holds another commit has changed since they were read.
  if (stored[12] or '') ~= ARGV[14] then return {'stale', {}, {}, 0} end

  local values, scores = cjson.decode(ARGV[7]), cjson.decode(ARGV[8])
  local raw, nb = cjson.decode(ARGV[9]), ARGV[10]
  local extra = cjson.decode(ARGV[12])
  local record_scores = {r = NULL, f = NULL, m = NULL}
  if scores ~= NULL then record_scores = scores end
  local delta = {user = user, dims = {}, scores = {}}
  local dirty = stored_as_of < 0
  local appended = {}
  -- The caller's explanation of a dimension (nil if it did not expect that one to change),
  -- with the scores before for a segment.
  local function explanation(dim)
    local why = extra.why and extra.why[dim]
    if why and dim == 'segment' and stored[9] then
      why.prev = {r = tonumber(stored[9]), f = tonumber(stored[10]), m = tonumber(stored[11])}
    end
    return why
  end

  for i, dim in ipairs(DIMS) do
    local old = present(stored[4 + i])
    local new = present(values[dim])
    if old ~= new then
      dirty = true
      local version = redis.call('HINCRBY', tier, 'n:' .. dim, 1)
      local seq = redis.call('HINCRBY', tier, 'seq', 1)
      if new then redis.call('HSET', tier, 'v:' .. dim, new) else redis.call('HDEL', tier, 'v:' .. dim) end
      appended[#appended + 1] = cjson.encode({
        user_id = user, dimension = dim, old = json_or_null(old), new = json_or_null(new),
        version = version, seq = seq, reason = ARGV[5], scores = record_scores,
        points = extra.points, repurchases = extra.repurchases, event_time = ARGV[6],
        why = explanation(dim),
      })
      delta.dims[dim] = {json_or_null(old), json_or_null(new)}
      delta.outbox = seq
    end
  end
  -- Notices are no change: the value held on both sides, the dimension's version as it is.
  for _, notice in ipairs(cjson.decode(ARGV[16])) do
    dirty = true
    local seq = redis.call('HINCRBY', tier, 'seq', 1)
    appended[#appended + 1] = cjson.encode({
      user_id = user, dimension = notice.dimension, old = notice.held, new = notice.held,
      version = tonumber(redis.call('HGET', tier, 'n:' .. notice.dimension)), seq = seq,
      reason = 'will_downgrade', scores = record_scores, points = extra.points,
      repurchases = extra.repurchases, event_time = notice.at, why = notice.why,
    })
    delta.outbox = seq
  end
  if ARGV[15] ~= '' then redis.call('HSET', tier, 'holds', ARGV[15])
  elseif stored[12] then redis.call('HDEL', tier, 'holds') end
  for i, dim in ipairs(SCORE_DIMS) do
    local old = tonumber(stored[8 + i] or '')
    local new = nil
    if scores ~= NULL then new = scores[dim] end
    if old ~= new then
      dirty = true
      delta.scores[dim] = {json_or_null(old), json_or_null(new)}
      if new then redis.call('HSET', tier, 's:' .. dim, int(new)) else redis.call('HDEL', tier, 's:' .. dim) end
    end
  end
  -- Compared as the caller's canonical JSON text (cjson's key order is not stable). The
  -- delta carries the raw values and the next boundary only when they change: the shard's
  -- indexes already hold them otherwise (a user's deltas are applied in order).
  if (stored[3] or 'null') ~= ARGV[9] then
    dirty = true
    delta.raw = raw
    redis.call('HSET', tier, 'raw', ARGV[9])
  end
  if (stored[4] or '') ~= nb then
    dirty = true
    if nb == '' then
      delta.nb = NULL
      redis.call('HDEL', tier, 'nb')
    else
      delta.nb = nb
      redis.call('HSET', tier, 'nb', nb)
    end
  end
  if dirty then
    -- The population side of this change, applied once by 'apply' (keyed by user and dseq).
    local dseq = redis.call('HINCRBY', tier, 'dseq', 1)
    delta.seq = dseq
    delta.new_user = stored_as_of < 0
    redis.call('HSET', pending, int(dseq), cjson.encode(delta))
  end
  redis.call('HSET', tier, 'asof', int(as_of), 'basis', int(basis), 'doc', ARGV[11], 'pop', int(snapshot))
  local waiting
  if #appended > 0 then waiting = redis.call('RPUSH', outbox, unpack(appended))
  else waiting = redis.call('LLEN', outbox) end
  return {'ok', appended, redis.call('HGETALL', pending), waiting}

elseif op == 'clear' then
  -- KEYS: pending; ARGV[2]: highest delta seq the population has applied for this user.
  return clear_applied(KEYS[1], tonumber(ARGV[2]))

elseif op == 'apply' then
  -- KEYS: 1 counts, 2 applied (user -> last delta seq), 3 due, 4 outbox index,
  --   5..19 users per score (r1..r5, f1..f5, m1..m5), 20..22 raw values (r, f, m)
  -- ARGV[2]: JSON deltas of this shard's users, each user's in ascending seq.
  -- A delta counts only if its seq is above the user's last applied one, so a delta
  -- re-sent after a crash is skipped. Returns {user, applied seq, ...}.
  local counts, applied, due, listed = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
  local out = {}
  for _, d in ipairs(cjson.decode(ARGV[2])) do
    local last = tonumber(redis.call('HGET', applied, d.user) or '0')
    if d.seq > last then
      last = d.seq
      if d.new_user then redis.call('HINCRBY', counts, 'users', 1) end
      for dim, pair in pairs(d.dims) do
        if present(pair[1]) then redis.call('HINCRBY', counts, dim .. ':' .. pair[1], -1) end
        if present(pair[2]) then redis.call('HINCRBY', counts, dim .. ':' .. pair[2], 1) end
      end
      for i, dim in ipairs(SCORE_DIMS) do
        local pair = d.scores[dim]
        if pair then
          local old, new = present(pair[1]), present(pair[2])
          if old then
            redis.call('HINCRBY', counts, dim .. ':' .. int(old), -1)
            redis.call('SREM', KEYS[4 + (i - 1) * 5 + old], d.user)
          end
          if new then
            redis.call('HINCRBY', counts, dim .. ':' .. int(new), 1)
            redis.call('SADD', KEYS[4 + (i - 1) * 5 + new], d.user)
          end
        end
        -- Absent: unchanged (deltas of earlier versions always carry them).
        if d.raw == NULL then
          redis.call('ZREM', KEYS[19 + i], d.user)
        elseif d.raw then
          redis.call('ZADD', KEYS[19 + i], d.raw[dim], d.user)
        end
      end
      if d.nb == NULL then redis.call('ZREM', due, d.user) elseif d.nb then redis.call('ZADD', due, d.nb, d.user) end
      if d.outbox then redis.call('ZADD', listed, d.outbox, d.user) end
      redis.call('HSET', applied, d.user, int(last))
    end
    out[#out + 1] = d.user
    out[#out + 1] = int(last)
  end
  return out
end
return redis.error_reply('tiers.lua: unknown operation ' .. tostring(op))
