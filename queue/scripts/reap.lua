-- reap.lua: return the messages of a dead consumer to the head of ready.
-- KEYS[1] consumers zset
-- KEYS[2] processing list of the consumer to reap
-- KEYS[3] ready list (the topic)
-- KEYS[4] dead list
-- KEYS[5] concurrency hash (consumer -> handler concurrency)
-- ARGV[1] name of the consumer to reap
-- ARGV[2] lease in ms
-- ARGV[3] max attempts
-- ARGV[4] '1' when a consumer reclaims the list of a crashed predecessor of
--         its own name at Subscribe: reap even without a heartbeat entry
-- ARGV[5] the reaper's concurrency, used when the dead one recorded none
-- Returns {returned to ready, dead-lettered}, or {-1, 0} when the consumer is
-- alive or already gone: the heartbeat score is re-checked here, atomically,
-- so a consumer that beat since the scan is never reaped. With ARGV[4] '1',
-- a heartbeat younger than the lease returns {-2, its age in ms} instead: a
-- live consumer has that name, and its list is left alone.
--
-- The oldest values of the list, as many as the dead consumer ran handlers at
-- once, may have been running when it died, so that delivery counts: their
-- stored attempt is bumped, and one that reaches max attempts this way (a
-- poison pill that kills its consumers) is dead-lettered. Workers start values
-- in list order, so the rest had been prefetched and never started: they go
-- back unchanged.
local now = now_ms()
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
local fresh = score and tonumber(score) >= now - tonumber(ARGV[2])
if ARGV[4] == '1' then
  if fresh then
    return {-2, now - tonumber(score)}
  end
elseif not score or fresh then
  return {-1, 0}
end
local maxattempts = tonumber(ARGV[3])
local running = tonumber(redis.call('HGET', KEYS[5], ARGV[1]) or '') or tonumber(ARGV[5])
local vals = redis.call('LRANGE', KEYS[2], 0, -1)
local back = {}
local dead = 0
for i = #vals, running + 1, -1 do
  back[#back + 1] = vals[i]
end
for i = math.min(#vals, running), 1, -1 do
  local v = vals[i]
  local a = (attempt_of(v) or 0) + 1
  local nv = with_attempt(v, a)
  -- An unreadable envelope keeps no count; the consumer dead-letters it.
  local counted = attempt_of(v) ~= nil or not is_envelope(v)
  if counted and a >= maxattempts then
    redis.call('RPUSH', KEYS[4], dead_record('consumer ' .. ARGV[1] .. ' stopped during delivery ' .. a, a, now, nv))
    dead = dead + 1
  else
    back[#back + 1] = nv
  end
end
-- back holds the list in reverse: LPUSHing it in that order restores the
-- original order at the head of ready.
push_all('LPUSH', KEYS[3], back)
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
return {#back, dead}
