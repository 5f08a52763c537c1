-- The start of a counter rebuild: open a pending total for each counter about to be
-- rebuilt (settles add to it from now on), and return the generation being built.
local generation = KEYS[1]
-- KEYS[2..]: the pending key of each counter

local ttl = ARGV[1]

for i = 2, #KEYS do redis.call('SET', KEYS[i], '0', 'EX', ttl) end
return redis.call('GET', generation) or '0'
