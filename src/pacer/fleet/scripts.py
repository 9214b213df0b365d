"""The fleet's Lua scripts: every step of the shared controller runs atomically in
Redis, on one clock (Redis ``TIME``, plus a skew that only tests set).

Keys of one fleet key ``K`` (all under the hash tag ``{K}``, so a cluster keeps them
on one shard):

- ``ctl``    hash: ``limit`` (float, as text), ``epoch``, ``last_decrease``,
  ``next_probe``, ``probe_at``, ``plateau``, ``rtt_noload`` (ms), ``rose_at`` (when
  the whole limit last rose), ``pause_until``, ``breaker_until``, ``seq`` (lease
  ids); the learned rate: ``rate`` (requests/s, 0: none), ``rate_base``,
  ``rate_search``, ``rate_cut_at``, ``evidence_at``, ``evidence_epoch``, the level
  held (``hold_level``, ``hold_since``, ``proven``, ``proven_at``), ``regrow`` (back
  from an outage) and the
  interval it is judged over (``rate_mark``, ``rate_starts``, ``rate_held``,
  ``rate_oks``, ``rate_clean``, ``rate_peak``, ``rate_bind``); the success rate's
  window (``win_at``, ``win_ok``, ``prev_ok``, ``prev_ms``); the breaker:
  ``breaker_open``, and its one probe, a lease: ``probe_node``, ``probe_until``;
- ``leases`` sorted set: one member per in-flight slot, ``NODE#SEQ``, scored by its
  expiry (ms); never a counter, so a slot cannot leak: it expires;
- ``nodes``  sorted set: node name scored by its heartbeat's expiry;
- ``info``   hash: node name -> ``"demand in_use held heard_at_ms"``;
- ``node:NAME`` set: the lease ids that node holds (so it renews and releases exactly
  its own); it expires with the node.
"""

from __future__ import annotations

# One tick of one node: renew, reap, feed the controller, share, grant, pause.
#
# KEYS: ctl, leases, nodes, info, mine
# ARGV: node, demand, in_use, seen_epoch, drops, successes, min_rtt_ms (-1: none),
#       pause_ms, breaker_ms, ttl_ms, initial_limit, min_limit, max_limit,
#       seed_limit (0: none), skew_ms, probe_every_ms, state_ttl_ms, decrease,
#       node_key_prefix (a node's lease set is this plus its name), node_ttl_ms,
#       refused (429s since the last tick), refused_in_epoch (those of the drops),
#       served (all successes), paced (successes the pace held back), finished
#       (attempts ended), seed_rate (0: none), want_probe (its breaker is not
#       closed), probe_result (1: its probe closed its breaker, -1: it failed, 0),
#       fresh_ms (a node's slots in use count while its last tick is this recent),
#       failed_in_epoch (of the drops, failures: 5xx, refused connections)
# Returns: held, limit (text), epoch, share (-1: all demand met), pause_left_ms,
#          breaker_left_ms, fleet_inflight (leases), live_nodes, plateau,
#          rtt_noload (text), cut, used (slots in use over the live nodes),
#          rate (text, 0: none), pace (this node's share of it, text, -1: none),
#          rate_cut, probe (1: this node holds the probe, 0: another does, -1: none),
#          breaker_open, part (text: this node's part of the slots shared out, in
#          (0, 1]: its share of the rate and of quotas announced in headers)
TICK = r"""
local ctl, leases, nodes, info, mine = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local node = ARGV[1]
local demand = tonumber(ARGV[2])
local in_use = tonumber(ARGV[3])
local seen_epoch = tonumber(ARGV[4])
local drops = tonumber(ARGV[5])
local oks = tonumber(ARGV[6])
local rtt = tonumber(ARGV[7])
local pause_ms = tonumber(ARGV[8])
local breaker_ms = tonumber(ARGV[9])
local ttl = tonumber(ARGV[10])
local lo = tonumber(ARGV[12])
local hi = tonumber(ARGV[13])
local seed = tonumber(ARGV[14])
local probe_every = tonumber(ARGV[16])
local state_ttl = tonumber(ARGV[17])
local decrease = tonumber(ARGV[18])
local node_prefix = ARGV[19]
local node_ttl = tonumber(ARGV[20])
local refused = tonumber(ARGV[21])
local refused_in_epoch = tonumber(ARGV[22])
local served = tonumber(ARGV[23])
local paced = tonumber(ARGV[24])
local finished = tonumber(ARGV[25])
local seed_rate = tonumber(ARGV[26])
local want_probe = tonumber(ARGV[27])
local probe_result = tonumber(ARGV[28])
local fresh_ms = tonumber(ARGV[29])
local failed_in_epoch = tonumber(ARGV[30])

-- The learned rate's tuning (as the single node's pacing gate: a decrease to the
-- success rate x 0.9 at most once a second, then +2 % of that per clean second in
-- which the rate bound, a search x 1.1 per second after a first estimate, or once
-- the rate has passed the one last refused by 10 % without a 429: the capacity rose).
local RATE_BACKOFF, RATE_STEP, RATE_GROWTH, RATE_MIN = 0.9, 0.02, 0.1, 0.1
local RATE_CUT_GAP, EVIDENCE_WINDOW, SEARCH_ABOVE = 1000, 60000, 1.1
local PROVEN_FOR = 30000  -- a level held proves the capacity for this long
local BUSY = 0.8

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[15])

local st = redis.call('HMGET', ctl, 'limit', 'epoch', 'last_decrease', 'next_probe',
                      'probe_at', 'plateau', 'rtt_noload', 'pause_until', 'breaker_until')
local limit = tonumber(st[1])
if not limit then
  -- A new fleet, or a Redis that lost its data: start from what this node knew.
  if seed > 0 then limit = seed else limit = tonumber(ARGV[11]) end
end
limit = math.min(hi, math.max(lo, limit))
local epoch = tonumber(st[2]) or 0
local last_decrease = tonumber(st[3]) or 0
local next_probe = tonumber(st[4]) or 0
local probe_at = tonumber(st[5]) or 0
local plateau = tonumber(st[6]) or 0
if plateau == 0 and seed > 0 and not tonumber(st[1]) then plateau = math.floor(limit) end
local rtt_noload = tonumber(st[7]) or -1
local pause_until = tonumber(st[8]) or 0
local breaker_until = tonumber(st[9]) or 0
local rs = redis.call('HMGET', ctl, 'rate', 'rate_base', 'rate_search', 'rate_cut_at',
                      'evidence_at', 'rate_mark', 'rate_starts', 'rate_held', 'rate_oks',
                      'rate_clean', 'rate_peak', 'rate_bind', 'rose_at', 'win_at', 'win_ok',
                      'prev_ok', 'prev_ms', 'breaker_open', 'probe_node', 'probe_until',
                      'evidence_epoch', 'hold_level', 'hold_since', 'proven', 'proven_at',
                      'regrow')
local rate = tonumber(rs[1]) or 0
local rate_base = tonumber(rs[2]) or 0
local rate_search = tonumber(rs[3]) or 0
if not tonumber(st[1]) and seed_rate > 0 and rate == 0 then
  -- A Redis that lost its data: the rate a node knew, searched upward again.
  rate, rate_base, rate_search = seed_rate, seed_rate, 1
end
local rate_cut_at = tonumber(rs[4]) or 0
local evidence_at = tonumber(rs[5]) or 0
local rate_mark = tonumber(rs[6]) or now
local rate_starts = tonumber(rs[7]) or 0
local rate_held = tonumber(rs[8]) or 0
local rate_oks = tonumber(rs[9]) or 0
local rate_clean = tonumber(rs[10]) or 1
local rate_peak = tonumber(rs[11]) or 0
local rate_bind = tonumber(rs[12]) or 0
local rose_at = tonumber(rs[13]) or now
local win_at = tonumber(rs[14]) or now
local win_ok = tonumber(rs[15]) or 0
local prev_ok = tonumber(rs[16]) or 0
local prev_ms = tonumber(rs[17]) or 0
local breaker_open = tonumber(rs[18]) or 0
local probe_node = rs[19] or ''
local probe_until = tonumber(rs[20]) or 0
local evidence_epoch = tonumber(rs[21]) or 0
local hold_level = tonumber(rs[22]) or 0
local hold_since = tonumber(rs[23]) or now
local proven = tonumber(rs[24]) or 0
local proven_at = tonumber(rs[25]) or 0
local regrow = tonumber(rs[26]) or 0

-- The clock went back: no stamp may lie in the future, nothing may stay paused for
-- longer than it could have been asked for.
if last_decrease > now then last_decrease = now end
if probe_at > now then probe_at = now end
if rate_cut_at > now then rate_cut_at = 0 end  -- (not "just now": that would block one)
if evidence_at > now then evidence_at = 0 end
if rate_mark > now then rate_mark = now end
if rose_at > now then rose_at = now end
if hold_since > now then hold_since = now end
if proven_at > now then proven_at = now end
if win_at > now then win_at = now end
probe_until = math.min(probe_until, now + ttl)
if next_probe > now + probe_every then next_probe = now + probe_every end
pause_until = math.min(pause_until, now + 600000)
breaker_until = math.min(breaker_until, now + 600000)

-- Reap expired leases and nodes; none may expire later than one TTL from now.
redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
for _, m in ipairs(redis.call('ZRANGEBYSCORE', leases, '(' .. (now + ttl), '+inf')) do
  redis.call('ZADD', leases, 'XX', now + ttl, m)
end
-- A node not heard from for node_ttl is gone: its leases are freed at once (they
-- would expire within the lease TTL anyway) and its share goes to the others.
local gone = redis.call('ZRANGEBYSCORE', nodes, '-inf', now)
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', nodes, '-inf', now)
  redis.call('HDEL', info, unpack(gone))
  for _, g in ipairs(gone) do
    local theirs = node_prefix .. g
    for _, m in ipairs(redis.call('SMEMBERS', theirs)) do redis.call('ZREM', leases, m) end
    redis.call('DEL', theirs)
  end
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', nodes, '(' .. (now + node_ttl), '+inf')) do
  redis.call('ZADD', nodes, 'XX', now + node_ttl, m)
end

-- This node's live leases: one that expired (reaped or not) is not renewed.
local held = {}
for _, m in ipairs(redis.call('SMEMBERS', mine)) do
  local exp = redis.call('ZSCORE', leases, m)
  if exp and tonumber(exp) > now then
    held[#held + 1] = m
  else
    redis.call('ZREM', leases, m)
    redis.call('SREM', mine, m)
  end
end
-- Every live node's demand and slots in use, this node's as of now. The slots in use
-- count only from nodes heard from within a few ticks: a node that went silent (killed,
-- cut off, starved of CPU) is not "using" the limit while the fleet waits for its
-- heartbeat to lapse; counted, it made a probe above the plateau look held.
redis.call('ZADD', nodes, now + node_ttl, node)
redis.call('HSET', info, node, demand .. ' ' .. in_use .. ' ' .. #held .. ' ' .. now)
local all = redis.call('HGETALL', info)
local demands = {}
local used = 0
for i = 1, #all, 2 do
  local d, u, _, seen = string.match(all[i + 1], '^(%d+) (%d+) (%d+) ?(%d*)')
  demands[#demands + 1] = {tonumber(d) or 0, all[i]}
  if now - (tonumber(seen) or now) <= fresh_ms then used = used + (tonumber(u) or 0) end
end

-- The controller: one cut per epoch, growth only when the fleet uses the limit
-- (slots in use, not leases held: a node's pace may leave some of its leases idle).
if rtt >= 0 then
  if rtt_noload < 0 or rtt < rtt_noload then
    rtt_noload = rtt
  else
    rtt_noload = rtt_noload + (rtt - rtt_noload) * 0.01  -- re-learned slowly upward
  end
end
-- The fleet's success rate: two windows of about a second each.
if now - win_at >= 1000 then
  prev_ok, prev_ms, win_ok, win_at = win_ok, math.min(now - win_at, 5000), 0, now
end
win_ok = win_ok + served
local success_rate = (prev_ok + win_ok) * 1000 / math.max(1000, prev_ms + now - win_at)

-- The learned rate's interval: starts, and successes the pace held (then it binds).
if rate > 0 then
  rate_starts = rate_starts + finished
  rate_held = rate_held + paced
  rate_oks = rate_oks + served
end
if refused > 0 then rate_clean = 0 end

-- Rate cap or concurrency cap? The fleet holds every slot of its limit, so over a
-- concurrency cap 429s come only with more in flight than it served: from a probe
-- above the plateau (the last congestion point), or soon after a rise (the slow
-- start's overshoot, the climb back to the plateau). A 429 with no more in flight
-- than a level the fleet recently held, in use and unrefused, for two no-load round
-- trips (and the ticks that bring the news: "proven"), or at or below the plateau
-- with the limit not risen for as long, is a rate cap's doing, or a capacity that
-- fell: once more after the cut that followed it (the limit not risen since), and a
-- rate is learned. Once one is known, 429s are its own while it binds (the pace
-- holds the starts back) or when they are such evidence.
local settle = 2 * math.max(rtt_noload, 0) + 250
if now - proven_at > PROVEN_FOR then proven = 0 end
local at_refusal = math.min(math.floor(limit), math.max(used, redis.call('ZCARD', leases)))
local evidence = refused_in_epoch > 0 and seen_epoch == epoch and probe_at == 0
                 and ((proven > 0 and at_refusal <= proven)
                      or (plateau > 0 and math.floor(limit) <= plateau
                          and now - rose_at >= settle))
local to_rate = false
if refused > 0 then
  if rate > 0 then
    local binding = (rate_oks >= 5 and rate_held >= 0.5 * rate_oks)
                    or (rate_oks < 5 and rate_bind == 1)
    to_rate = binding or evidence
  elseif evidence then
    if evidence_at > 0 and now - evidence_at <= EVIDENCE_WINDOW
       and epoch > evidence_epoch and rose_at <= evidence_at then
      to_rate = true
    else
      evidence_at, evidence_epoch = now, epoch
    end
  end
end
local rate_cut = 0
if to_rate and now - rate_cut_at >= RATE_CUT_GAP then
  local old = rate
  if rate == 0 then
    rate = success_rate * RATE_BACKOFF
    rate_search = 1                                     -- a first estimate: searched
  else
    rate = math.max(math.min(rate, success_rate) * RATE_BACKOFF, rate * RATE_BACKOFF ^ 2)
    rate_search = 0
  end
  rate = math.max(RATE_MIN, rate)
  if old > 0 then rate_peak = old else rate_peak = success_rate end  -- refused there
  rate_base, rate_cut_at, evidence_at = rate, now, 0
  rate_mark, rate_starts, rate_held, rate_oks, rate_clean = now, 0, 0, 0, 1
  rate_bind = 1
  rate_cut = 1
end
-- Probe the rate upward: every clean interval (no 429 at all) in which it bound.
if rate > 0 and rate_cut == 0 then
  local elapsed = now - rate_mark
  if elapsed >= math.max(1000, 5000 / rate) then
    local busy = rate_starts >= BUSY * rate * elapsed / 1000 and rate_oks > 0
                 and rate_held >= BUSY * rate_oks
    if rate_clean == 1 and busy and pause_until <= now then
      if rate_search == 1 then
        rate = rate * (1 + RATE_GROWTH)
      else
        rate = rate + math.max(0.001, RATE_STEP * rate_base)
        -- Clean well above where the 429s came: the capacity rose, search again.
        if rate >= SEARCH_ABOVE * rate_peak then rate_search = 1 end
      end
    end
    if rate_oks > 0 then
      if rate_held >= 0.5 * rate_oks then rate_bind = 1 else rate_bind = 0 end
    end
    rate_mark, rate_starts, rate_held, rate_oks, rate_clean = now, 0, 0, 0, 1
  end
end
-- 429s put down to the rate are not congestion of the concurrency limit.
if to_rate then drops = drops - refused_in_epoch end

local old_cap = math.floor(limit)
local cut = 0
-- (At most one cut per no-load round trip and the ticks that spread the news: until
-- every node has heard of a cut and its attempts above the new shares have ended, the
-- fleet still has more in flight than the new limit, and their 429s are no news.)
if drops > 0 and seen_epoch == epoch
   and now - last_decrease >= math.max(rtt_noload, 0) + fresh_ms then
  -- Congestion at what was in flight: the slots in use, or the leases if more (the
  -- in-use counts are up to a tick old), never above the limit.
  local busy = math.max(used, redis.call('ZCARD', leases))
  local point = math.max(1, math.min(math.floor(limit), busy))
  if probe_at > 0 and plateau > 0 and math.floor(limit) > plateau then
    limit = plateau  -- the probe above the plateau was refused: back to the plateau
    regrow = 0
  elseif failed_in_epoch >= drops and plateau > 0 then
    -- Only failures (5xx, refused connections): the upstream failed, it did not
    -- refuse this concurrency. Lower the limit, keep the plateau, and regrow to it
    -- fast once answers are clean (an outage must not leave the fleet at 1).
    limit = math.max(lo, math.floor(limit * decrease))
    regrow = 1
  else
    plateau = math.max(lo, point - 1)
    limit = math.max(lo, math.min(math.floor(limit * decrease), point - 1))
    regrow = 0
  end
  epoch = epoch + 1
  last_decrease = now
  next_probe = now + probe_every
  probe_at = 0
  cut = 1
elseif oks > 0 and used + 1 >= math.floor(limit) then
  if plateau == 0 then
    limit = limit + oks                                  -- slow start: x2 per round trip
  elseif probe_at > 0 then
    -- (held only if the probe's slot was in use: otherwise it was never tried)
    if now - probe_at >= math.max(1000, 4 * rtt_noload) and used >= math.floor(limit) then
      plateau = math.floor(limit)                        -- the probe held: capacity rose
      probe_at = 0
      next_probe = now
    end
  elseif limit < plateau and regrow == 1 then
    limit = math.min(plateau, limit + oks)               -- after an outage: x2 per rtt
  elseif limit < plateau then
    limit = math.min(plateau, limit + oks / limit)       -- back to the plateau: +1 per rtt
  elseif now >= next_probe then
    limit = math.floor(limit) + 1                        -- probe one above the plateau
    probe_at = now
  end
  limit = math.min(hi, limit)
end
if math.floor(limit) > old_cap then rose_at = now end
-- A level held in use, unrefused, for the settling time is proven.
if refused > 0 or cut == 1 or math.floor(limit) ~= hold_level then
  hold_level, hold_since = math.floor(limit), now
elseif now - hold_since >= settle and used + 1 >= hold_level then  -- (a tick's lag)
  proven, proven_at = hold_level, now
end
if pause_ms > 0 then pause_until = math.max(pause_until, now + pause_ms) end

-- One breaker for the fleet, one probe: an opening anywhere opens all; once its
-- cool-down is over, the first node that wants to probe holds the probe (a lease it
-- renews while its breaker is not closed); the others stay open until its outcome.
-- A success closes the fleet's breaker; a failure reopens it (with the prober's
-- longer cool-down) and frees the probe.
local holder_alive = probe_node ~= '' and redis.call('ZSCORE', nodes, probe_node)
if probe_node ~= '' and (probe_until <= now or not holder_alive) then
  probe_node = ''                                      -- its holder is gone or silent
end
if probe_node == node and probe_result ~= 0 then
  if probe_result > 0 then breaker_open, breaker_until = 0, 0 end
  probe_node = ''
end
if breaker_ms > 0 then
  breaker_until = math.max(breaker_until, now + breaker_ms)
  breaker_open = 1
  if probe_node == node then probe_node = '' end
end
if breaker_open == 1 and now >= breaker_until and want_probe == 1
   and (probe_node == '' or probe_node == node) then
  probe_node = node
  probe_until = now + ttl
end
if breaker_open == 0 then probe_node = '' end
local probe = -1
if probe_node == node then probe = 1 elseif probe_node ~= '' then probe = 0 end

-- Shares follow demand: max-min fair (water-filling) over the live nodes' demands,
-- in whole slots that add up to the limit. The nodes that want more than the water
-- level get it, and the slots left over go one each to some of them, in name order
-- rotated every 10 s.
table.sort(demands, function(x, y) return x[1] < y[1] or (x[1] == y[1] and x[2] < y[2]) end)
local cap = math.floor(limit)
local left = cap
local share = -1
local alloc = {}
for i, e in ipairs(demands) do
  local rest = #demands - i + 1
  if e[1] * rest > left then
    local level = math.floor(left / rest)
    local spare = left - level * rest
    local names = {}
    for j = i, #demands do names[#names + 1] = demands[j][2] end
    table.sort(names)
    local turn = math.floor(now / 10000) % rest
    for j, n in ipairs(names) do
      local extra = 0
      if (j - 1 - turn) % rest < spare then extra = 1 end
      alloc[n] = level + extra
    end
    share = alloc[node]
    break
  end
  alloc[e[2]] = e[1]
  left = left - e[1]
end
local want = math.min(demand, alloc[node] or demand)
-- The rate is shared as the slots are (a node's pace then fits its slots), and so
-- is every quota announced in headers (each node spends this part of the fleet-wide
-- remaining it reads); a node with no slot yet gets one slot's worth.
local total = 0
for _, a in pairs(alloc) do total = total + a end
local part = math.max(1, alloc[node] or 0) / math.max(1, total)
local pace = -1
if rate > 0 then pace = rate * part end
want = math.max(want, in_use)  -- slots in use are not given up under a request

if #held > want then
  for i = #held, want + 1, -1 do
    redis.call('ZREM', leases, held[i])
    redis.call('SREM', mine, held[i])
    held[i] = nil
  end
elseif #held < want then
  local add = math.min(want - #held, cap - redis.call('ZCARD', leases))
  for _ = 1, add do
    local id = node .. '#' .. redis.call('HINCRBY', ctl, 'seq', 1)
    redis.call('ZADD', leases, now + ttl, id)
    redis.call('SADD', mine, id)
    held[#held + 1] = id
  end
end
for _, m in ipairs(held) do redis.call('ZADD', leases, 'XX', now + ttl, m) end
redis.call('PEXPIRE', mine, ttl)
redis.call('HSET', info, node, demand .. ' ' .. in_use .. ' ' .. #held .. ' ' .. now)

redis.call('HSET', ctl, 'limit', tostring(limit), 'epoch', epoch,
           'last_decrease', last_decrease, 'next_probe', next_probe, 'probe_at', probe_at,
           'plateau', plateau, 'rtt_noload', tostring(rtt_noload),
           'pause_until', pause_until, 'breaker_until', breaker_until, 'rose_at', rose_at,
           'rate', tostring(rate), 'rate_base', tostring(rate_base), 'rate_search', rate_search,
           'rate_cut_at', rate_cut_at, 'evidence_at', evidence_at,
           'evidence_epoch', evidence_epoch, 'hold_level', hold_level,
           'hold_since', hold_since, 'proven', proven, 'proven_at', proven_at,
           'regrow', regrow, 'rate_mark', rate_mark,
           'rate_starts', rate_starts, 'rate_held', rate_held, 'rate_oks', rate_oks,
           'rate_clean', rate_clean, 'rate_peak', tostring(rate_peak), 'rate_bind', rate_bind,
           'win_at', win_at, 'win_ok', win_ok, 'prev_ok', prev_ok, 'prev_ms', prev_ms,
           'breaker_open', breaker_open, 'probe_node', probe_node, 'probe_until', probe_until)
for _, k in ipairs({ctl, leases, nodes, info}) do redis.call('PEXPIRE', k, state_ttl) end

return {#held, tostring(limit), epoch, share, math.max(0, pause_until - now),
        math.max(0, breaker_until - now), redis.call('ZCARD', leases),
        redis.call('ZCARD', nodes), plateau, tostring(rtt_noload), cut, used,
        tostring(rate), tostring(pace), rate_cut, probe, breaker_open, tostring(part)}
"""

# A node leaves: it releases exactly its own leases and its place in the shares.
# KEYS: leases, nodes, info, mine   ARGV: node
LEAVE = r"""
local leases, nodes, info, mine = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ids = redis.call('SMEMBERS', mine)
for _, m in ipairs(ids) do redis.call('ZREM', leases, m) end
redis.call('DEL', mine)
redis.call('ZREM', nodes, ARGV[1])
redis.call('HDEL', info, ARGV[1])
return #ids
"""

# What `pacer status` shows: the shared limit and every live node's share.
# KEYS: ctl, leases, nodes, info   ARGV: skew_ms
# Returns: limit (text), epoch, fleet_inflight, {node, "demand in_use held", ...}
DESCRIBE = r"""
local ctl, leases, nodes, info = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local st = redis.call('HMGET', ctl, 'limit', 'epoch')
local live = redis.call('ZRANGEBYSCORE', nodes, '(' .. now, '+inf')
local out = {}
for _, n in ipairs(live) do
  out[#out + 1] = n
  out[#out + 1] = redis.call('HGET', info, n) or '0 0 0'
end
return {st[1] or '', tonumber(st[2]) or 0, redis.call('ZCOUNT', leases, '(' .. now, '+inf'), out}
"""
