-- Put back a reservation Redis lost (a restart without persistence): the worker that
-- holds the call in flight registers it again. A no-op if Redis still has it.
local reservation = KEYS[1]
local deadlines = KEYS[2]
local tenant_resv = KEYS[3]
local key_resv = KEYS[4]
local tenant_cc = KEYS[5]
local key_cc = KEYS[6]
local key_tok = KEYS[7]
local tenant_tok = KEYS[8]

local amount = ARGV[1]
local tokens = ARGV[2]
local deadline = ARGV[3]
local request_id = ARGV[4]
local record = ARGV[5]
local hold_ttl = ARGV[6]
local worker = ARGV[7]

if redis.call('EXISTS', reservation) == 1 then return 0 end
for _, k in ipairs({key_cc, tenant_cc}) do redis.call('INCR', k); redis.call('EXPIRE', k, hold_ttl) end
for _, k in ipairs({tenant_resv, key_resv}) do redis.call('INCRBY', k, amount); redis.call('EXPIRE', k, hold_ttl) end
redis.call('HSET', reservation, 'amount', amount, 'tokens', tokens, 'k_tok', key_tok, 't_tok', tenant_tok,
  'k_cc', key_cc, 't_cc', tenant_cc, 't_resv', tenant_resv, 'k_resv', key_resv, 'record', record, 'worker', worker)
redis.call('EXPIRE', reservation, hold_ttl)
redis.call('ZADD', deadlines, deadline, request_id)
redis.call('EXPIRE', deadlines, hold_ttl)
return 1
