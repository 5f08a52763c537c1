-- Invalidate a tenant's money counters: a new generation, so every counter built before
-- is rebuilt from Postgres before admission trusts it again.
local generation = KEYS[1]

return redis.call('INCR', generation)
