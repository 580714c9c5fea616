-- Moves an entry to the dead-letter stream: XADD there, then XACK, in one
-- script, so the entry is acked only once its dead letter is written (a
-- MULTI would run the XACK even when the XADD fails, e.g. on WRONGTYPE).
-- An entry no longer pending for the consumer (acked, or claimed by another
-- consumer whose handler now decides) is left alone.
-- KEYS[1]: the stream (the topic)
-- KEYS[2]: the dead-letter stream
-- ARGV[1]: the group
-- ARGV[2]: the consumer
-- ARGV[3]: the entry ID
-- ARGV[4]: the dead-letter stream's approximate MAXLEN
-- ARGV[5..]: the dead letter's field, value pairs
-- Returns: 1 if the entry was dead-lettered and acked, 0 if it was not
-- pending for the consumer.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #p == 0 then
  return 0
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 5))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return 1
