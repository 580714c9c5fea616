-- Re-claims entries for a consumer, but only those it still owns: an entry
-- another consumer claimed in the meantime is left alone, so a late lease
-- renewal or hand back never takes work from its new owner. The delivery
-- count is read here and written back with the delta, so it never depends on
-- what the caller believes the count to be.
-- KEYS[1]: the stream (the topic)
-- ARGV[1]: the group
-- ARGV[2]: the consumer
-- ARGV[3]: the idle time to set, in milliseconds (0 renews the lease)
-- ARGV[4]: added to each delivery count (0, or -1 for a delivery that never
--          ran); the result is never below 0
-- ARGV[5]: the largest delivery count to leave (-1: no limit)
-- ARGV[6..]: entry IDs
-- Returns: the IDs re-claimed, which still exist and were pending for ARGV[2].
local claimed = {}
local delta = tonumber(ARGV[4])
local limit = tonumber(ARGV[5])
for i = 6, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2])
  if #p == 1 then
    local n = tonumber(p[1][4]) + delta
    if limit >= 0 and n > limit then
      n = limit
    end
    if n < 0 then
      n = 0
    end
    local r = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id,
      'IDLE', ARGV[3], 'RETRYCOUNT', n, 'JUSTID')
    if #r == 1 then
      claimed[#claimed + 1] = id
    end
  end
end
return claimed
