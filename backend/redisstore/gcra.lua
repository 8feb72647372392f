-- The mathematics of bucket/gcra.go (Decide, Refund, Pause, FreshAt), run
-- atomically inside Redis on one bucket's key, in integer microseconds of
-- the server's clock. Lua numbers are doubles: every value here is an
-- integer below 2^53 (the Go side keeps them there), so + - * and
-- comparisons are exact, and floordiv below makes division exact.
--
-- KEYS[1]  the bucket's state (absent: a fresh bucket)
-- ARGV[1]  the request: little-endian int64s, first the operation
--            1 admit:  capacity, charge, cost, maxWait, n, then n × (window, max)
--                      capacity and charge as in bucket.Decide
--            2 refund: bookingTAT, bookingPrev, bookingGen, start, cost, n,
--                      then n × window
--            3 pause:  duration
-- ARGV[2]  optional: the time in µs to use instead of TIME. Only tests send
--          it; with it a key expires no sooner than 10 minutes from now in
--          real time, so a fake clock cannot lose state to real expiry.
--
-- State: cmsgpack array {1, TAT, Paused, Gen, nq, then per quota: window, ns,
-- then ns × (slot index delta, count)}; slots ascend, the first delta is
-- from 0. The key expires (PX) when the state becomes fresh.
--
-- Replies: admit {allowed, wait, now, TAT, prevTAT, Gen, freshAt};
-- refund and pause {now, freshAt}. freshAt is 0 for a fresh bucket.

local SLOTS = 100

local function floordiv(a, b)
  local q = math.floor(a / b)
  local r = a - q * b
  if r < 0 then
    q = q - 1
  elseif r >= b then
    q = q + 1
  end
  return q
end

local function slotwidth(window)
  return floordiv(window - 1, SLOTS) + 1
end

local key = KEYS[1]
local req = ARGV[1]
local r = { struct.unpack('<' .. string.rep('i8', #req / 8), req) }
local op = r[1]

local now
if ARGV[2] then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Load. quotas[i] = {window, idx = {...}, cnt = {...}}
local tat, paused, gen, quotas = 0, 0, 0, {}
local raw = redis.call('GET', key)
if raw then
  local s = cmsgpack.unpack(raw)
  tat, paused, gen = s[2], s[3], s[4]
  local p = 6
  for i = 1, s[5] do
    local q = { window = s[p], idx = {}, cnt = {} }
    local ns = s[p + 1]
    p = p + 2
    local index = 0
    for j = 1, ns do
      index = index + s[p]
      q.idx[j] = index
      q.cnt[j] = s[p + 1]
      p = p + 2
    end
    quotas[i] = q
  end
end

local function freshat()
  local fresh = math.max(tat, paused)
  for _, q in ipairs(quotas) do
    local n = #q.idx
    if n > 0 then
      fresh = math.max(fresh, (q.idx[n] + 1) * slotwidth(q.window) + q.window)
    end
  end
  return fresh
end

-- A state that has become fresh is forgotten, whether or not its key has
-- expired yet (expiry is in whole milliseconds).
if raw and freshat() <= now then
  tat, paused, gen, quotas, raw = 0, 0, 0, {}, false
end
if op == 2 and not raw then
  return { now, 0 } -- a forgotten bucket has nothing to refund
end

-- save writes the state with an expiry at the moment it becomes fresh, or
-- deletes it if it is fresh already, and returns that moment.
local function save()
  local fresh = freshat()
  if fresh <= now then
    redis.call('DEL', key)
    return 0
  end
  local out = { 1, tat, paused, gen, #quotas }
  for _, q in ipairs(quotas) do
    out[#out + 1] = q.window
    out[#out + 1] = #q.idx
    local prev = 0
    for j = 1, #q.idx do
      out[#out + 1] = q.idx[j] - prev
      out[#out + 1] = q.cnt[j]
      prev = q.idx[j]
    end
  end
  local ms = floordiv(fresh - now + 999, 1000)
  if ARGV[2] then
    ms = math.max(ms, 600000)
  end
  redis.call('SET', key, cmsgpack.pack(out), 'PX', ms)
  return fresh
end

if op == 3 then
  paused = math.max(paused, now + r[2])
  return { now, save() }
end

if op == 2 then
  -- Only the latest admission, with nothing refunded since, is refunded.
  if tat ~= r[2] or gen ~= r[4] then
    return { now, freshat() }
  end
  tat = r[3]
  gen = gen + 1
  local start, cost = r[5], r[6]
  for k = 1, r[7] do
    local window = r[7 + k]
    for _, q in ipairs(quotas) do
      if q.window == window then
        local index = floordiv(start, slotwidth(window))
        for j = 1, #q.idx do
          if q.idx[j] == index then
            q.cnt[j] = q.cnt[j] - math.min(cost, q.cnt[j])
            if q.cnt[j] == 0 then
              table.remove(q.idx, j)
              table.remove(q.cnt, j)
            end
            break
          end
        end
      end
    end
  end
  return { now, save() }
end

-- op == 1: admit.
local capacity, charge, cost, maxwait, nq = r[2], r[3], r[4], r[5], r[6]
local start = math.max(now, tat - capacity, paused)

-- Line the stored quotas up with the limit's, by window.
local reshaped = #quotas ~= nq
if not reshaped then
  for i = 1, nq do
    if quotas[i].window ~= r[5 + 2 * i] then
      reshaped = true
      break
    end
  end
end
if reshaped then
  local qs = {}
  for i = 1, nq do
    local window = r[5 + 2 * i]
    qs[i] = { window = window, idx = {}, cnt = {} }
    for _, old in ipairs(quotas) do
      if old.window == window then
        qs[i].idx, qs[i].cnt = old.idx, old.cnt
      end
    end
  end
  quotas = qs
end

for i = 1, nq do
  local q, max = quotas[i], r[6 + 2 * i]
  local w = slotwidth(q.window)
  -- Prune slots wholly outside every window still to be asked about.
  local lo = floordiv(now - q.window, w)
  local n = 0
  while n < #q.idx and q.idx[n + 1] < lo do
    n = n + 1
  end
  if n > 0 then
    local idx, cnt = {}, {}
    for j = n + 1, #q.idx do
      idx[j - n], cnt[j - n] = q.idx[j], q.cnt[j]
    end
    q.idx, q.cnt = idx, cnt
  end
  -- The first time ≥ start at which cost more units fit within max.
  local t = start
  lo = floordiv(t - q.window, w)
  local used = 0
  for j = 1, #q.idx do
    if q.idx[j] >= lo then
      used = used + q.cnt[j]
    end
  end
  for j = 1, #q.idx do
    if used + cost <= max then
      break
    end
    if q.idx[j] >= lo then
      used = used - q.cnt[j]
      t = (q.idx[j] + 1) * w + q.window
    end
  end
  start = math.max(start, t)
end

local wait = start - now
if wait > maxwait then
  -- A refusal charges nothing; only a change of the quotas' shape is kept.
  local fresh = 0
  if reshaped then
    fresh = save()
  elseif raw then
    fresh = freshat()
  end
  return { 0, wait, now, 0, 0, 0, fresh }
end

local prev = tat
tat = math.max(tat, start) + charge
gen = gen + 1
for i = 1, nq do
  local q = quotas[i]
  local index = floordiv(start, slotwidth(q.window))
  local j = #q.idx
  while j > 0 and q.idx[j] > index do
    j = j - 1
  end
  if j > 0 and q.idx[j] == index then
    q.cnt[j] = q.cnt[j] + cost
  else
    table.insert(q.idx, j + 1, index)
    table.insert(q.cnt, j + 1, cost)
  end
end
return { 1, wait, now, tat, prev, gen, save() }
