-- requeue.lua: move the oldest dead letters back to the tail of ready.
-- KEYS[1] dead list
-- KEYS[2] ready list (the topic)
-- ARGV[1] most records to move; the caller keeps it to one chunk
--         (requeueChunk) so that one call cannot stall the server
-- Returns the number moved. Each record is unwrapped to its original value
-- with the stored attempt reset to 0, so it gets max attempts afresh.
local recs = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #recs == 0 then
  return 0
end
redis.call('LTRIM', KEYS[1], #recs, -1)
local out = {}
for _, r in ipairs(recs) do
  local v = dead_value(r)
  if attempt_of(v) ~= nil then
    v = with_attempt(v, 0)
  end
  out[#out + 1] = v
end
push_all('RPUSH', KEYS[2], out)
return #out
