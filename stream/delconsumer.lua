-- Deletes a consumer of a group only if it has no pending entries.
-- XGROUP DELCONSUMER drops the consumer's pending entries; checking in Go
-- and deleting in a second command would race with the consumer reading.
-- KEYS[1]: the stream (the topic)
-- ARGV[1]: the group
-- ARGV[2]: the consumer
-- Returns: 1 if the consumer was deleted, 0 if it has pending entries.
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then
  return 0
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
