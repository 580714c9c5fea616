-- tick.lua: a consumer's periodic housekeeping in one call: heartbeat,
-- promotion of due delayed messages, and the scan for dead consumers.
-- KEYS[1] consumers zset (score: last heartbeat, unix ms)
-- KEYS[2] delayed zset (score: due time, unix ms)
-- KEYS[3] ready list (the topic)
-- KEYS[4] processing list of this consumer (simple mode: any absent key)
-- KEYS[5] concurrency hash (consumer -> handler concurrency)
-- ARGV[1] consumer name; '' = no heartbeat and no scan (simple mode)
-- ARGV[2] lease in ms: consumers whose heartbeat is older are reported stale
-- ARGV[3] most delayed messages to promote
-- ARGV[4] this consumer's handler concurrency, recorded for the reaper
-- Returns {now ms, ms until the next due time or -1, promoted, created,
-- processing length, stale names...}: the wait is clamped to [0, one day], so
-- that a far-future or bogus score (a foreign member, +inf) can neither
-- overflow the caller's arithmetic nor make it tick in a loop; created is 1
-- when the heartbeat had to re-create this consumer's entry (another consumer
-- reaped it), 0 otherwise; the length lets the consumer notice values it holds
-- without knowing (see reconcile.lua).
local now = now_ms()
local name = ARGV[1]
local created = 0
if name ~= '' then
  created = redis.call('ZADD', KEYS[1], now, name)
  redis.call('HSET', KEYS[5], name, ARGV[4])
end
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
if #due > 0 then
  -- Due messages join the tail of ready, in due order.
  push_all('RPUSH', KEYS[3], due)
  for i = 1, #due, CHUNK do
    redis.call('ZREM', KEYS[2], unpack(due, i, math.min(i + CHUNK - 1, #due)))
  end
end
local MAX_WAIT = 86400000
local wait = -1
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #first == 2 then
  local at = tonumber(first[2])
  if at == nil then
    -- A score this Lua cannot parse ("inf"; miniredis's Lua rejects "1e+18"):
    -- one that large is far away, a negative one is due.
    if string.sub(first[2], 1, 1) == '-' then at = now else at = now + MAX_WAIT end
  end
  wait = at - now
  if wait ~= wait or wait > MAX_WAIT then
    wait = MAX_WAIT
  elseif wait < 0 then
    wait = 0
  end
  wait = math.floor(wait)
end
local out = {now, wait, #due, created, redis.call('LLEN', KEYS[4])}
if name ~= '' then
  local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[2])), 'LIMIT', 0, 16)
  for _, s in ipairs(stale) do
    if s ~= name then
      out[#out + 1] = s
    end
  end
end
return out
