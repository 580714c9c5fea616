-- reconcile.lua: return to ready the values in a consumer's processing list
-- that the consumer does not know it holds. They get there when the reply of
-- a BLMOVE is lost (a connection cut after the server moved the value): the
-- value is safe, but no handler would ever see it.
-- KEYS[1] processing list of this consumer
-- KEYS[2] ready list (the topic)
-- ARGV    the values the consumer holds, with repetitions
-- Returns the number of values returned to the head of ready. The caller
-- runs it while no fetch of its own is in flight, so an unknown value is
-- never one about to be delivered.
local want = {}
for _, v in ipairs(ARGV) do
  want[v] = (want[v] or 0) + 1
end
local vals = redis.call('LRANGE', KEYS[1], 0, -1)
local orphans = {}
for _, v in ipairs(vals) do
  if (want[v] or 0) > 0 then
    want[v] = want[v] - 1
  else
    orphans[#orphans + 1] = v
  end
end
local back = {}
for i = #orphans, 1, -1 do
  redis.call('LREM', KEYS[1], -1, orphans[i])
  back[#back + 1] = orphans[i]
end
push_all('LPUSH', KEYS[2], back)
return #orphans
