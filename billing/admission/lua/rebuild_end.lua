-- The end of a counter rebuild: each counter becomes its value from Postgres plus what
-- settled since the rebuild began (minus, for a balance), stamped with the generation it
-- was built at. Nothing is written if the tenant was invalidated again meanwhile (0: rebuild again).
local generation = KEYS[1]
-- KEYS[2..]: triples of (counter, built, pending)

local built_at = ARGV[1]
local ttl = ARGV[2]
-- ARGV[3..]: pairs of (value from Postgres, sign: 1 for a spend, -1 for a balance)

if (redis.call('GET', generation) or '0') ~= built_at then return 0 end
for i = 0, (#KEYS - 1) / 3 - 1 do
  local counter, built, pending = KEYS[2 + 3 * i], KEYS[3 + 3 * i], KEYS[4 + 3 * i]
  local value, sign = tonumber(ARGV[3 + 2 * i]), tonumber(ARGV[4 + 2 * i])
  local moved = tonumber(redis.call('GET', pending) or '0')
  redis.call('SET', counter, string.format('%d', value + sign * moved), 'EX', ttl)
  redis.call('SET', built, built_at, 'EX', ttl)
  redis.call('DEL', pending)
end
return 1
