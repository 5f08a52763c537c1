-- Settle: release a reservation and count the call's actual cost. Idempotent per request:
-- a reservation is released once; the spend is counted when `count` says its ledger row
-- was just written.
-- A money counter older than the tenant's generation is not trusted and not moved: the
-- ledger row is already in Postgres, so its rebuild will count it. While a rebuild runs
-- (its `pending` key exists) the cost also goes there, so the rebuild cannot miss a row
-- written after its SUM.
-- Returns {released 1/0, tenant spent after (or 'x'), credit after (or 'x')}.
local reservation = KEYS[1]
local deadlines = KEYS[2]
local tenant_spent = KEYS[3]
local key_spent = KEYS[4]
local credit = KEYS[5]
local generation = KEYS[6]
local tenant_built = KEYS[7]
local key_built = KEYS[8]
local credit_built = KEYS[9]
local tenant_pending = KEYS[10]
local key_pending = KEYS[11]
local credit_pending = KEYS[12]

local request_id = ARGV[1]
local actual = ARGV[2]           -- micro-dollars
local tokens = tonumber(ARGV[3])
local count = ARGV[4] == '1'

local gen = redis.call('GET', generation) or '0'
local function add(counter, built, pending, sign)
  if redis.call('EXISTS', pending) == 1 then redis.call('INCRBY', pending, actual) end
  if redis.call('GET', built) ~= gen or redis.call('EXISTS', counter) == 0 then return 'x' end
  if sign > 0 then return tostring(redis.call('INCRBY', counter, actual)) end
  return tostring(redis.call('DECRBY', counter, actual))
end
local function spend()
  if not count then return {'x', 'x'} end
  local spent = add(tenant_spent, tenant_built, tenant_pending, 1)
  add(key_spent, key_built, key_pending, 1)
  local after = add(credit, credit_built, credit_pending, -1)
  return {spent, after}
end

redis.call('ZREM', deadlines, request_id)
if redis.call('EXISTS', reservation) == 0 then local after = spend(); return {0, after[1], after[2]} end
local h = redis.call('HGETALL', reservation)
local r = {}
for i = 1, #h, 2 do r[h[i]] = h[i + 1] end
local amount = tonumber(r['amount'])
for _, k in ipairs({r['t_resv'], r['k_resv']}) do
  if tonumber(redis.call('GET', k) or '0') >= amount then
    redis.call('DECRBY', k, r['amount'])
  else
    redis.call('SET', k, 0)
  end
end
for _, k in ipairs({r['k_cc'], r['t_cc']}) do
  if tonumber(redis.call('GET', k) or '0') > 0 then redis.call('DECR', k) end
end
local correction = tokens - tonumber(r['tokens'])
for _, k in ipairs({r['k_tok'], r['t_tok']}) do
  if redis.call('EXISTS', k) == 1 then redis.call('INCRBY', k, correction) end
end
redis.call('DEL', reservation)
local after = spend()
return {1, after[1], after[2]}
