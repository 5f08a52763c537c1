-- Delete a lock only if this holder still has it.
local lock = KEYS[1]

local holder = ARGV[1]

if redis.call('GET', lock) == holder then return redis.call('DEL', lock) end
return 0
