-- lib.lua: helpers prepended to every script of this package (see scripts.go).
-- Only plain Lua string/math functions and redis.call: miniredis runs these too.
--
-- Envelope (internal/wire): magic "\255BK", version 1, attempt (uint16 BE at
-- bytes 5-6, 1-based Lua indices), time (8 bytes), then id, metadata, payload.
-- Dead-letter record: "\255BKD", attempts (uint32 BE), time (uint64 BE unix
-- ms), reason length (uint32 BE), reason, original value.
local MAGIC = string.char(255) .. 'BK'
local DEAD_MAGIC = MAGIC .. 'D'
local DEAD_HEADER = 20
local CHUNK = 1000 -- values per variadic call: unpack has a stack limit

-- now_ms reads the server clock, the one clock every score uses.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- be encodes a non-negative integer as width big-endian bytes.
local function be(n, width)
  local out = {}
  for i = width, 1, -1 do
    out[i] = string.char(n % 256)
    n = math.floor(n / 256)
  end
  return table.concat(out)
end

-- unbe decodes width big-endian bytes of s starting at index i.
local function unbe(s, i, width)
  local n = 0
  for j = i, i + width - 1 do
    n = n * 256 + string.byte(s, j)
  end
  return n
end

local function is_envelope(v)
  return string.sub(v, 1, 3) == MAGIC
end

-- attempt_of returns the stored attempt of a version-1 envelope, or nil for a
-- foreign value or an envelope this script cannot read.
local function attempt_of(v)
  if #v >= 14 and is_envelope(v) and string.byte(v, 4) == 1 then
    return unbe(v, 5, 2)
  end
  return nil
end

-- with_attempt returns v with its stored attempt set to a. A foreign value is
-- wrapped in a minimal envelope (time 0, no id, no metadata) so that it can
-- carry the count; an unreadable envelope is returned unchanged, for the
-- consumer to dead-letter when it fails to decode it.
local function with_attempt(v, a)
  if a > 65535 then a = 65535 end
  if attempt_of(v) ~= nil then
    return string.sub(v, 1, 4) .. be(a, 2) .. string.sub(v, 7)
  end
  if is_envelope(v) then
    return v
  end
  return MAGIC .. string.char(1) .. be(a, 2) .. be(0, 8) .. string.char(0, 0) .. v
end

local function dead_record(reason, attempts, ms, v)
  return DEAD_MAGIC .. be(attempts, 4) .. be(ms, 8) .. be(#reason, 4) .. reason .. v
end

-- dead_value returns the original value inside a dead-letter record, or the
-- record itself when it is not one (a value pushed by another client).
local function dead_value(r)
  if #r >= DEAD_HEADER and string.sub(r, 1, 4) == DEAD_MAGIC then
    local rl = unbe(r, 17, 4)
    if DEAD_HEADER + rl <= #r then
      return string.sub(r, DEAD_HEADER + rl + 1)
    end
  end
  return r
end

-- push_all runs cmd (RPUSH or LPUSH) on key with vals, in chunks.
local function push_all(cmd, key, vals)
  for i = 1, #vals, CHUNK do
    redis.call(cmd, key, unpack(vals, i, math.min(i + CHUNK - 1, #vals)))
  end
end

-- body --
