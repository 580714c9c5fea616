-- purge.lua: delete every dead letter.
-- KEYS[1] dead list
-- ARGV: none
-- Returns the number of records deleted. UNLINK, not DEL: a long dead list is
-- freed in the background instead of blocking the server.
local n = redis.call('LLEN', KEYS[1])
redis.call('UNLINK', KEYS[1])
return n
