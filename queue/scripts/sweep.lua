-- sweep.lua: adopt orphaned processing lists. A list is orphaned when it holds
-- values but its consumer has no heartbeat entry: a consumer reaped during a
-- pause longer than the lease, whose BLMOVE then moved a value before its
-- next heartbeat re-registered it, and which died in between. Nothing would
-- ever return such a list. Adopting registers the consumer with a heartbeat
-- of now: if it is in fact alive, its next heartbeat simply follows; if not,
-- it goes stale after the lease and is reaped like any dead consumer.
-- KEYS[1] consumers zset
-- KEYS[2..] processing lists found by SCAN
-- ARGV[1..] the consumer name of each list, in the order of KEYS[2..]
-- Returns the number of lists adopted.
local now = nil
local adopted = 0
for i = 2, #KEYS do
  local name = ARGV[i - 1]
  if redis.call('LLEN', KEYS[i]) > 0 and not redis.call('ZSCORE', KEYS[1], name) then
    now = now or now_ms()
    redis.call('ZADD', KEYS[1], now, name)
    adopted = adopted + 1
  end
end
return adopted
