-- fetch.lua: move a batch from the head of ready to this consumer's processing list.
-- KEYS[1] ready list (the topic)
-- KEYS[2] processing list of this consumer
-- KEYS[3] dead list
-- KEYS[4] consumers zset
-- KEYS[5] concurrency hash
-- ARGV[1] most values to move
-- ARGV[2] largest value accepted, in bytes: larger ones go to dead here and never cross the network
-- ARGV[3] consumer name
-- ARGV[4] its handler concurrency
-- Returns {length of ready after the move, registered, moved values oldest
-- first...}. Before it moves anything, the call registers the consumer if it
-- has no heartbeat entry (another consumer reaped it during a pause longer
-- than the lease): registered is then 1. So a processing list is never filled
-- by this script unregistered, and a consumer that dies right after the call
-- is still reaped.
local n = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local vals = redis.call('LRANGE', KEYS[1], 0, n - 1)
if #vals == 0 then
  return {0, 0}
end
local ms = now_ms()
local registered = redis.call('ZADD', KEYS[4], 'NX', ms, ARGV[3])
if registered == 1 then
  redis.call('HSET', KEYS[5], ARGV[3], ARGV[4])
end
redis.call('LTRIM', KEYS[1], #vals, -1)
local oversize = false
for _, v in ipairs(vals) do
  if #v > limit then
    oversize = true
    break
  end
end
local keep = vals
if oversize then
  keep = {}
  for _, v in ipairs(vals) do
    if #v > limit then
      redis.call('RPUSH', KEYS[3], dead_record('value of ' .. #v .. ' bytes exceeds limit of ' .. limit,
        attempt_of(v) or 0, ms, v))
    else
      keep[#keep + 1] = v
    end
  end
end
push_all('RPUSH', KEYS[2], keep)
-- The reply leads with the two counts; the common case moves the batch
-- without copying it.
table.insert(keep, 1, registered)
table.insert(keep, 1, redis.call('LLEN', KEYS[1]))
return keep
