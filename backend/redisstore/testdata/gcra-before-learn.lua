-- The mathematics of bucket/gcra.go (Decide, Refund, Pause, FreshAt), run
-- atomically inside Redis on one bucket's key, in integer microseconds of
-- the server's clock. Lua numbers are doubles: every value here is an
-- integer below 2^53 (the Go side keeps them there), so + - * and
-- comparisons are exact, and floordiv below makes division exact.
--
-- KEYS     the buckets' states (absent: a fresh bucket), one per request;
--          a key may appear more than once, and its requests are decided
--          in order. One call deciding many requests costs Redis less than
--          a call each: a call's own overhead and TIME are paid once, and
--          consecutive requests on one key read and write it once. Then
--          the lease sets the requests name (below), which never share a
--          name with a bucket (their prefixes are apart), so that a run
--          of requests on one key always ends before them.
-- ARGV[1]  the requests, one after another, one per key: each is
--          little-endian int64s, op, a, b, c, d, e, n, then n pairs (x, y):
--            op 1 admit:  a capacity, b charge (as in bucket.Decide), c cost,
--                         d maxWait; pairs (window, max) of the quotas
--            op 2 refund: the booking's a TAT, b previous TAT, c Gen, then
--                         d its start, e its cost; pairs (window, 0)
--            op 3 pause:  a the duration
--          and ops on a lease, whose pairs are followed by int64s k, ttl,
--          len, then len bytes: the lease's ID, KEYS[k] the bucket's lease
--          set, ttl its time to live:
--            op 4 admit with a lease: as op 1, e the cap (Limit.Inflight)
--            op 5 refund and release: as op 2
--            op 6 renew: all fields 0
--            op 7 release: all fields 0
-- ARGV[2]  optional: the time in µs to use instead of TIME. Only tests send
--          it; with it a key expires no sooner than 10 minutes from now in
--          real time, so a fake clock cannot lose state to real expiry.
--
-- State: struct '<i8i8i8' TAT, Paused, Gen; then, if there are quotas, a
-- cmsgpack array: per quota window, ns, then ns × (slot index delta,
-- count); slots ascend and the first delta is from 0; then MARK; then
-- Seen, the time the state was written at, as a msgpack int64 (0xd3, then
-- 8 bytes big-endian): a state without quotas is always 34 bytes. The key
-- expires in the second after the state becomes fresh (PXAT, kept by
-- later writes with KEEPTTL while it still covers them), and a state found
-- fresh is ignored.
--
-- A key's clock never runs backwards: it is the later of TIME and its
-- state's Seen. bucket.Decide relies on it (quota slots that an earlier
-- time still counts may have been pruned), and TIME may step back: a
-- failover to a master whose clock is behind, or a step of the host's.
--
-- Leases: a bucket's lease set is a sorted set of its held leases, member
-- the lease's ID, score its expiry on the key's clock. Expired leases are
-- removed before the set is counted, and never count; the set expires in
-- the second after its latest lease (PEXPIREAT, set again only when that
-- second moves later), so that it is gone once no lease is held.
--
-- Reply: per request, in order, struct '<i8i8i8i8i8i8i8' allowed, wait,
-- now, TAT, prevTAT, Gen, freshAt; refunds and pauses fill in only now and
-- freshAt. freshAt is 0 for a fresh bucket. allowed is 2 for an admission
-- refused at its cap (wait: until the first lease expires), and for a
-- renewal 1 if the lease was held, 0 if not. A string costs the client less
-- than an array; only if a request failed is the reply an array: that
-- string, then the error messages (see the end).

local req = ARGV[1]
local call, unpack8, pack = redis.call, struct.unpack, struct.pack
local floor, max, min, byte = math.floor, math.max, math.min, string.byte

-- clock is the server's time; now, the time of the key being decided.
local clock, now
if ARGV[2] then
  clock = tonumber(ARGV[2])
else
  local t = call('TIME')
  clock = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
now = clock

local function floordiv(x, y)
  local q = floor(x / y)
  local r = x - q * y
  if r < 0 then
    q = q - 1
  elseif r >= y then
    q = q + 1
  end
  return q
end

-- REPLY is the format of a request's reply.
local REPLY = '<i8i8i8i8i8i8i8'

-- MARK follows the quotas of every state this script writes: an empty
-- msgpack array, which earlier versions of the script (which set each
-- key's expiry to the exact millisecond) read past and drop, as they drop
-- Seen after it. A state without it may expire before expiry() of its
-- fresh moment, so its key's expiry is never kept.
local MARK = '\144'

-- NONE is the quotas of a state without any. It is shared, so it is never
-- changed: states with quotas get tables of their own.
local NONE = {}

-- expiry is when a key whose state becomes fresh at t expires: t rounded
-- up to a whole second, in µs.
local function expiry(t)
  return floordiv(t + 999999, 1000000) * 1000000
end

-- slotwidth is bucket.SlotWidth: a window is divided into 100 slots.
local function slotwidth(window)
  return floordiv(window - 1, 100) + 1
end

-- The state of the key being decided: quotas[i] = {window, idx = {...},
-- cnt = {...}}; exists: the key holds it; marked: this script wrote it, so
-- the key expires no sooner than expiry(freshat()); expires: that bound,
-- when known; dirty: it must be written; saved: when the state saved last
-- becomes fresh.
local tat, paused, gen, quotas, exists, expires, dirty, saved

local function freshat()
  local fresh = max(tat, paused)
  if quotas == NONE then
    return fresh
  end
  for i = 1, #quotas do
    local q = quotas[i]
    local n = #q.idx
    if n > 0 then
      fresh = max(fresh, (q.idx[n] + 1) * slotwidth(q.window) + q.window)
    end
  end
  return fresh
end

-- load reads key's state, and sets now to the key's time. A state that
-- has become fresh is forgotten, whether or not its key has expired yet.
local function load(key)
  tat, paused, gen, quotas, exists, expires, dirty = 0, 0, 0, NONE, false, nil, false
  now = clock
  local raw = call('GET', key)
  if not raw then
    return
  end
  local marked = false
  local p
  tat, paused, gen, p = unpack8('<i8i8i8', raw)
  if #raw == p + 9 and byte(raw, p) == 0x90 then
    -- No quotas: MARK, Seen.
    marked = true
    now = max(clock, unpack8('>i8', raw, p + 2))
  elseif p <= #raw then
    -- {quotas, MARK, Seen}, or from earlier versions {MARK}, {quotas,
    -- MARK} or {quotas}.
    local vals = { cmsgpack.unpack(string.sub(raw, p)) }
    if type(vals[#vals]) == 'number' then
      now = max(clock, table.remove(vals))
    end
    local s = vals[1]
    marked = #vals == 2 or #s == 0
    if #s > 0 then
      quotas = {}
    end
    local k = 1
    while k <= #s do
      local q = { window = s[k], idx = {}, cnt = {} }
      local index = 0
      for j = 1, s[k + 1] do
        index = index + s[k + 2 * j]
        q.idx[j] = index
        q.cnt[j] = s[k + 2 * j + 1]
      end
      k = k + 2 + 2 * s[k + 1]
      quotas[#quotas + 1] = q
    end
  end
  local fresh = freshat()
  if marked and not ARGV[2] then
    expires = expiry(fresh)
  end
  if fresh <= now then
    tat, paused, gen, quotas = 0, 0, 0, NONE
  else
    exists = true
  end
end

-- save keeps the state to be written, or, if it is fresh already, drops
-- it (the key is deleted), and returns the moment it becomes fresh, or 0.
local function save()
  dirty = true
  saved = freshat()
  if saved <= now then
    tat, paused, gen, quotas, exists, saved = 0, 0, 0, NONE, false, 0
  else
    exists = true
  end
  return saved
end

-- flush writes the state of key if it changed: the key expires at
-- expiry(fresh), a whole second; a write that does not move that keeps
-- the key's expiry (KEEPTTL costs Redis less than setting one), so the key
-- always expires no sooner than expiry() of the state it holds. With a
-- test's clock, keys live at least ten real minutes instead.
local function flush(key)
  if not dirty then
    return
  end
  if not exists then
    call('DEL', key)
    return
  end
  local val
  if #quotas == 0 then
    val = pack('<i8i8i8B>Bi8', tat, paused, gen, 0x90, 0xd3, now) -- 0x90: MARK
  else
    val = pack('<i8i8i8', tat, paused, gen)
    local slots = {}
    for i = 1, #quotas do
      local q = quotas[i]
      slots[#slots + 1] = q.window
      slots[#slots + 1] = #q.idx
      local prev = 0
      for j = 1, #q.idx do
        slots[#slots + 1] = q.idx[j] - prev
        slots[#slots + 1] = q.cnt[j]
        prev = q.idx[j]
      end
    end
    val = val .. cmsgpack.pack(slots) .. pack('>BBi8', 0x90, 0xd3, now) -- 0x90: MARK
  end
  local exp = expiry(saved)
  if expires and exp <= expires then
    call('SET', key, val, 'KEEPTTL')
  elseif ARGV[2] then
    call('SET', key, val, 'PX', max(floordiv(exp - now, 1000), 600000))
  else
    call('SET', key, val, 'PXAT', exp / 1000)
  end
end

-- hold makes lease id of the set lkey expire at e, unless it expires later
-- already, and keeps the set until its latest lease expires. top, the
-- latest expiry before, tells whether the set's own expiry must move:
-- only if its second moves later. empty says the set is known empty (not
-- read again).
local function hold(lkey, id, e, empty)
  local top = not empty and call('ZRANGE', lkey, -1, -1, 'WITHSCORES')[2]
  call('ZADD', lkey, 'GT', e, id)
  top = top and tonumber(top)
  if ARGV[2] then
    call('PEXPIRE', lkey, max(floordiv(max(e, top or 0) - now, 1000) + 1, 600000))
  elseif not top or expiry(e) > expiry(top) then
    call('PEXPIREAT', lkey, expiry(e) / 1000)
  end
end

-- lease runs a renewal (op 6) or a release (op 7) of lease id of lkey.
local function lease(op, lkey, id, ttl, raw)
  local fresh = raw and freshat() or 0
  if op == 7 then
    call('ZREM', lkey, id)
    return pack(REPLY, 0, 0, now, 0, 0, 0, fresh)
  end
  local e = call('ZSCORE', lkey, id)
  if not e or tonumber(e) <= now then
    return pack(REPLY, 0, 0, now, 0, 0, 0, fresh)
  end
  hold(lkey, id, now + ttl)
  return pack(REPLY, 1, 0, now, 0, 0, 0, fresh)
end

-- decide runs the request at offset at of req on the loaded state, and
-- returns its reply and the offset of the next request.
local function decide(at)
  local op, a, b, c, d, e, nq, pos = unpack8('<i8i8i8i8i8i8i8', req, at)
  local raw, next = exists, pos + 16 * nq
  local lkey, ttl, id, held
  if op >= 4 then
    local k, n
    k, ttl, n, next = unpack8('<i8i8i8', req, next)
    lkey, id, next = KEYS[k], string.sub(req, next, next + n - 1), next + n
    if op >= 6 then
      return lease(op, lkey, id, ttl, raw), next
    elseif op == 5 then
      call('ZREM', lkey, id)
      op = 2
    else
      -- The cap first: at it, nothing else is decided, nor charged.
      call('ZREMRANGEBYSCORE', lkey, '-inf', now)
      held = call('ZCARD', lkey)
      if held >= e and not call('ZSCORE', lkey, id) then
        local first = tonumber(call('ZRANGE', lkey, 0, 0, 'WITHSCORES')[2])
        return pack(REPLY, 2, first - now, now, 0, 0, 0, raw and freshat() or 0), next
      end
    end
  end

  if op == 3 then
    paused = max(paused, now + a)
    return pack(REPLY, 0, 0, now, 0, 0, 0, save()), next
  end

  if op == 2 then
    -- Only the latest admission, with nothing refunded since, is refunded.
    if not raw or tat ~= a or gen ~= c then
      return pack(REPLY, 0, 0, now, 0, 0, 0, raw and freshat() or 0), next
    end
    tat = b
    gen = gen + 1
    for k = 1, nq do
      local window = unpack8('<i8', req, pos + 16 * (k - 1))
      for i = 1, #quotas do
        local q = quotas[i]
        if q.window == window then
          local index = floordiv(d, slotwidth(window))
          for j = 1, #q.idx do
            if q.idx[j] == index then
              q.cnt[j] = q.cnt[j] - min(e, q.cnt[j])
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
    return pack(REPLY, 0, 0, now, 0, 0, 0, save()), next
  end

  -- op == 1: admit.
  local capacity, charge, cost, maxwait = a, b, c, d
  local start = max(now, tat - capacity, paused)

  -- Line the stored quotas up with the limit's, by window.
  local windows, maxes = NONE, NONE
  if nq > 0 then
    windows, maxes = {}, {}
    for i = 1, nq do
      windows[i], maxes[i] = unpack8('<i8i8', req, pos + 16 * (i - 1))
    end
  end
  local reshaped = #quotas ~= nq
  if not reshaped and nq > 0 then
    for i = 1, nq do
      if quotas[i].window ~= windows[i] then
        reshaped = true
        break
      end
    end
  end
  if reshaped and nq == 0 then
    quotas = NONE
  elseif reshaped then
    local qs = {}
    for i = 1, nq do
      qs[i] = { window = windows[i], idx = {}, cnt = {} }
      for _, old in ipairs(quotas) do
        if old.window == windows[i] then
          qs[i].idx, qs[i].cnt = old.idx, old.cnt
        end
      end
    end
    quotas = qs
  end

  for i = 1, nq do
    local q, qmax = quotas[i], maxes[i]
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
      if used + cost <= qmax then
        break
      end
      if q.idx[j] >= lo then
        used = used - q.cnt[j]
        t = (q.idx[j] + 1) * w + q.window
      end
    end
    start = max(start, t)
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
    return pack(REPLY, 0, wait, now, 0, 0, 0, fresh), next
  end

  local prev = tat
  tat = max(tat, start) + charge
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
  if lkey then
    hold(lkey, id, now + ttl, held == 0)
  end
  return pack(REPLY, 1, wait, now, tat, prev, gen, save()), next
end

-- skip returns the offset of the request after the one at offset at.
local function skip(at)
  local op, nq = unpack8('<i8', req, at), unpack8('<i8', req, at + 6 * 8)
  local next = at + 7 * 8 + 16 * nq
  if op >= 4 then
    next = next + 3 * 8 + unpack8('<i8', req, next + 2 * 8)
  end
  return next
end

-- Each key's request follows the previous one's; so do the replies, in
-- out. at is the offset of the next request to decide.
local out, errs, at = {}, {}, 1

-- decideAll decides requests first..last, all on key, reading the key once
-- and writing it once.
local function decideAll(key, first, last)
  load(key)
  for _ = first, last do
    out[#out + 1], at = decide(at)
  end
  flush(key)
end

-- Consecutive requests on one key are decided together. Requests that fail
-- (a key holding something else, a write refused) changed nothing but the
-- leases they took (held by no one until they expire: that only
-- under-admits), and fail alone, with the other requests on their key:
-- their reply is allowed = -1 and wait = the index of their error among
-- those that follow the replies. KEYS after the requests' are lease sets,
-- never equal to a bucket's key: a run of one key ends before them.
local i = 1
while at <= #req do
  local key, last = KEYS[i], i
  while KEYS[last + 1] == key do
    last = last + 1
  end
  local n, from = #out, at
  local ok, err = pcall(decideAll, key, i, last)
  if not ok then
    for k = #out, n + 1, -1 do
      out[k] = nil
    end
    errs[#errs + 1] = type(err) == 'table' and err.err or tostring(err)
    at = from
    for _ = i, last do
      out[#out + 1] = pack(REPLY, -1, #errs, now, 0, 0, 0, 0)
      at = skip(at)
    end
  end
  i = last + 1
end
if #errs == 0 then
  return table.concat(out)
end
return { table.concat(out), unpack(errs) }
