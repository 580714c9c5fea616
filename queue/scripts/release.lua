-- release.lua: a consumer's last call on Shutdown. Whatever is left in its
-- processing list (fetched but never started, or handled but not acked) goes
-- back to the head of ready in its original order; then the consumer
-- deregisters.
-- KEYS[1] processing list of this consumer
-- KEYS[2] ready list (the topic)
-- KEYS[3] consumers zset
-- KEYS[4] concurrency hash
-- ARGV[1] consumer name
-- Returns the number of values returned to ready.
local vals = redis.call('LRANGE', KEYS[1], 0, -1)
local back = {}
for i = #vals, 1, -1 do
  back[#back + 1] = vals[i]
end
push_all('LPUSH', KEYS[2], back)
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
return #vals
