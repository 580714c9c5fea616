-- ack.lua: settle a batch of handled messages of one consumer.
-- KEYS[1] processing list of this consumer
-- KEYS[2] delayed zset
-- KEYS[3] dead list
-- KEYS[4] ready list (the topic)
-- ARGV: a sequence of operations, each a letter followed by its fields:
--   A value                          ack: remove value from processing
--   R value newvalue delayms         retry: remove, then add newvalue to delayed, due now + delayms
--   D value newvalue attempts reason dead: remove, then push a record of newvalue to dead
--   X value attempts reason          dead without removal (simple mode, nothing in processing)
-- R and D act only when the value was still in processing: a value that a
-- reaper already returned to ready must not be scheduled a second time.
-- Returns {the number of values that were no longer in processing, the
-- length of ready}: the length tells the consumer whether to fetch its next
-- values in a batch (a backlog) or block for one (an empty queue).
local now = nil
local missing = 0

-- Acks usually arrive in about the order of the list: count the acked values
-- (plain A ops) and cut the longest prefix of the list made of them with one
-- LTRIM, instead of one LREM each. What is left is removed by LREM below.
local acked = {}
local nacked = 0
local i = 1
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'A' then
    acked[ARGV[i + 1]] = (acked[ARGV[i + 1]] or 0) + 1
    nacked = nacked + 1
    i = i + 2
  elseif op == 'R' then
    i = i + 4
  elseif op == 'D' then
    i = i + 5
  else
    i = i + 4
  end
end
if nacked > 0 then
  local head = redis.call('LRANGE', KEYS[1], 0, nacked - 1)
  local cut = 0
  for _, v in ipairs(head) do
    local n = acked[v]
    if not n or n == 0 then
      break
    end
    acked[v] = n - 1
    cut = cut + 1
  end
  if cut > 0 then
    redis.call('LTRIM', KEYS[1], cut, -1)
  end
end

i = 1
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'A' then
    local v = ARGV[i + 1]
    if acked[v] > 0 then
      -- not in the trimmed prefix
      acked[v] = acked[v] - 1
      missing = missing + 1 - redis.call('LREM', KEYS[1], 1, v)
    end
    i = i + 2
  elseif op == 'R' then
    if redis.call('LREM', KEYS[1], 1, ARGV[i + 1]) == 1 then
      now = now or now_ms()
      redis.call('ZADD', KEYS[2], now + tonumber(ARGV[i + 3]), ARGV[i + 2])
    else
      missing = missing + 1
    end
    i = i + 4
  elseif op == 'D' then
    if redis.call('LREM', KEYS[1], 1, ARGV[i + 1]) == 1 then
      now = now or now_ms()
      redis.call('RPUSH', KEYS[3], dead_record(ARGV[i + 4], tonumber(ARGV[i + 3]), now, ARGV[i + 2]))
    else
      missing = missing + 1
    end
    i = i + 5
  elseif op == 'X' then
    now = now or now_ms()
    redis.call('RPUSH', KEYS[3], dead_record(ARGV[i + 3], tonumber(ARGV[i + 2]), now, ARGV[i + 1]))
    i = i + 4
  else
    return redis.error_reply('ERR ack.lua: unknown operation ' .. tostring(op))
  end
end
return {missing, redis.call('LLEN', KEYS[4])}
