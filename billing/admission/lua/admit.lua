-- Admission: check every limit of one request and take what it needs, or take nothing.
-- Every key is hash-tagged by tenant ({t<id>}): one hash slot, so Redis Cluster runs it.
-- Returns {'ok', key req, key tok, tenant req, tenant tok, generation}
--      or {'init'} (a money counter is missing or older than the tenant's generation: rebuild it)
--      or {'rate', what, limit, used} or {'quota', what, left}.
local key_req = KEYS[1]          -- this minute's request window of the key
local key_tok = KEYS[2]          -- ... and its token window
local tenant_req = KEYS[3]
local tenant_tok = KEYS[4]
local key_cc = KEYS[5]           -- concurrent requests of the key
local tenant_cc = KEYS[6]
local tenant_spent = KEYS[7]     -- the month's spend, micro-dollars
local key_spent = KEYS[8]
local tenant_resv = KEYS[9]      -- what the tenant's calls in flight hold
local key_resv = KEYS[10]
local credit = KEYS[11]          -- prepaid balance, micro-dollars
local reservation = KEYS[12]     -- this request's reservation (a hash)
local deadlines = KEYS[13]       -- the tenant's reservations by deadline (a sorted set)
local generation = KEYS[14]      -- the tenant's counter generation
local tenant_built = KEYS[15]    -- the generation each money counter was built at
local key_built = KEYS[16]
local credit_built = KEYS[17]

local key_rpm = tonumber(ARGV[1])
local key_tpm = tonumber(ARGV[2])
local tenant_rpm = tonumber(ARGV[3])
local tenant_tpm = tonumber(ARGV[4])
local key_concurrent = tonumber(ARGV[5])
local tenant_concurrent = tonumber(ARGV[6])
local tokens = ARGV[7]           -- integers stay strings on their way to INCRBY
local amount = ARGV[8]
local tenant_budget = tonumber(ARGV[9])   -- -1: none
local key_budget = tonumber(ARGV[10])     -- -1: none
local prepaid = ARGV[11] == '1'
local window_ttl = ARGV[12]
local deadline = ARGV[13]
local request_id = ARGV[14]
local record = ARGV[15]
local hold_ttl = ARGV[16]
local worker = ARGV[17]

local function num(k) return tonumber(redis.call('GET', k) or '0') end
local gen = redis.call('GET', generation) or '0'
local function stale(built) return redis.call('GET', built) ~= gen end

if (tenant_budget >= 0 or prepaid) and stale(tenant_built) then return {'init'} end
if key_budget >= 0 and stale(key_built) then return {'init'} end
if prepaid and stale(credit_built) then return {'init'} end

local n_tokens, n_amount = tonumber(tokens), tonumber(amount)
local windows = {
  {key_req, key_rpm, '1', 'key_requests'}, {key_tok, key_tpm, tokens, 'key_tokens'},
  {tenant_req, tenant_rpm, '1', 'tenant_requests'}, {tenant_tok, tenant_tpm, tokens, 'tenant_tokens'}}
for _, w in ipairs(windows) do
  local used = num(w[1])
  if w[2] > 0 and used + tonumber(w[3]) > w[2] then return {'rate', w[4], tostring(w[2]), tostring(used)} end
end
if key_concurrent > 0 and num(key_cc) + 1 > key_concurrent then
  return {'rate', 'key_concurrent', tostring(key_concurrent), tostring(num(key_cc))} end
if tenant_concurrent > 0 and num(tenant_cc) + 1 > tenant_concurrent then
  return {'rate', 'tenant_concurrent', tostring(tenant_concurrent), tostring(num(tenant_cc))} end
if tenant_budget >= 0 and num(tenant_spent) + num(tenant_resv) + n_amount > tenant_budget then
  return {'quota', 'tenant_budget', tostring(tenant_budget - num(tenant_spent) - num(tenant_resv))} end
if key_budget >= 0 and num(key_spent) + num(key_resv) + n_amount > key_budget then
  return {'quota', 'key_budget', tostring(key_budget - num(key_spent) - num(key_resv))} end
if prepaid and num(credit) - num(tenant_resv) - n_amount < 0 then
  return {'quota', 'credit', tostring(num(credit) - num(tenant_resv))} end

local counts = {}
for i, w in ipairs(windows) do
  counts[i] = tostring(redis.call('INCRBY', w[1], w[3]))
  redis.call('EXPIRE', w[1], window_ttl)
end
for _, k in ipairs({key_cc, tenant_cc}) do redis.call('INCR', k); redis.call('EXPIRE', k, hold_ttl) end
for _, k in ipairs({tenant_resv, key_resv}) do redis.call('INCRBY', k, amount); redis.call('EXPIRE', k, hold_ttl) end
redis.call('HSET', reservation, 'amount', amount, 'tokens', tokens, 'k_tok', key_tok, 't_tok', tenant_tok,
  'k_cc', key_cc, 't_cc', tenant_cc, 't_resv', tenant_resv, 'k_resv', key_resv, 'record', record, 'worker', worker)
redis.call('EXPIRE', reservation, hold_ttl)
redis.call('ZADD', deadlines, deadline, request_id)
redis.call('EXPIRE', deadlines, hold_ttl)
return {'ok', counts[1], counts[2], counts[3], counts[4], gen}
