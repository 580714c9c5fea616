-- schedule.lua: add values to the delayed set, due after a delay measured on
-- the server's clock, so that a publisher whose clock is skewed can neither
-- fire a message early nor hold it back.
-- KEYS[1] delayed zset (score: due time, unix ms)
-- ARGV[1] delay in ms; 0 or less: due at once
-- ARGV[2..] values (envelopes: each has a unique ID, so none merge)
-- Returns the number of values added.
local due = now_ms() + math.max(0, tonumber(ARGV[1]))
local args = {}
for i = 2, #ARGV do
  args[#args + 1] = due
  args[#args + 1] = ARGV[i]
end
for i = 1, #args, 2 * CHUNK do
  redis.call('ZADD', KEYS[1], unpack(args, i, math.min(i + 2 * CHUNK - 1, #args)))
end
return #ARGV - 1
