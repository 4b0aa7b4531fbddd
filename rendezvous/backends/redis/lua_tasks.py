"""wasimoff's task queue (:mod:`.tasks`): every shared transition of a task is one atomic script.

Keys of a task store named ``ns`` (``P = <prefix>:{<ns>}``; every key is in ARGV, as in :mod:`.lua`):

* ``P:t:<id>`` HASH, the task: ``s`` state (``q`` queued, ``l`` leased, ``r`` retrying, ``d`` done,
  ``f`` failed), ``o``/``oe`` the node and epoch it was submitted on (its *origin*, where its
  client waits), ``ln``/``le`` the node and epoch it is leased to, ``c`` its class (the sorted
  capabilities it requires, ``-`` for none), ``d`` the task as the profile's codec made it,
  ``n`` the files it prefers (SimpleMatch), ``a`` failed attempts, ``e`` their errors
  (newline-separated), ``r`` the result (state ``d``, until the origin has it).
* ``P:q:<class>`` LIST of queued ids (retries at the front); ``P:classes`` SET of the classes
  whose list is not empty (the queue limit counts every list).
* ``P:delayed`` ZSET id -> due time (server ms): tasks waiting out their retry backoff.
* ``P:o:<epoch><node>`` / ``P:l:<epoch><node>`` SETs: the ids a node's life originated / holds leased.
* ``P:lives`` SET of ``<epoch><node>`` that have such sets (the reaper's list); ``P:cap`` HASH
  ``<epoch><node>`` -> the capabilities of its providers (``*``: every one), the nodes told of new work;
  ``P:stats`` HASH ``<epoch><node>`` -> ``"<providers> <completions last second>"``.

A node is alive while ``<prefix>:node:<node>`` holds its epoch. A task is *accepted* when
``wm_submit`` has returned: from then on it is in Redis, whatever happens to the node.
First result wins: only the (node, epoch) holding the lease can complete or fail a task.
A dead node's leases are failed (retried elsewhere after the original's backoff) and the tasks
it originated are cancelled, by whichever node's beat sees it first (``wm_reap``).

Bus frames (msgpack ``[kind, ns, epoch, 0, payload]``, as :mod:`.lua`'s): ``w`` (payload: a
class with new work), ``r`` (``id .. " " .. result``, to the origin), ``f`` (``id .. " " ..
errors``, to the origin: the task failed for good), ``c`` (``id``, to the lease node: revoke it).
"""

from __future__ import annotations

from rendezvous.backends.redis.mux import Script

# ARGV: P, node-key prefix, inbox prefix, ns, this node, its epoch, max attempts, then the script's own.
_TASKS = """
local P, NK, IB, NS, NODE, EPOCH, MAX = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
local ME = EPOCH .. NODE
local T, Q, CLASSES, DELAYED, LIVES, CAP, STATS = P .. ':t:', P .. ':q:', P .. ':classes', P .. ':delayed', P .. ':lives', P .. ':cap', P .. ':stats'
local function alive(node, epoch)
  return node ~= false and redis.call('GET', NK .. node) == epoch
end
local function send(node, epoch, kind, payload)
  redis.call('PUBLISH', IB .. node, cmsgpack.pack({kind, NS, epoch, 0, payload}))
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function backoff(attempt)  -- the original's: about 3.16 e^(i/1.737) ms, 10 ms ... 1 s
  return math.min(1000, math.floor(3.16 * math.exp(attempt / 1.737)))
end
local function can_serve(caps, class)
  if caps == '*' then return true end
  if class == '-' then return true end
  local wrapped = ',' .. caps .. ','
  for cap in string.gmatch(class, '[^,]+') do
    if not string.find(wrapped, ',' .. cap .. ',', 1, true) then return false end
  end
  return true
end
-- Tell every live node whose providers can run ``class`` that there is work.
local function notify(class)
  local all = redis.call('HGETALL', CAP)
  for i = 1, #all, 2 do
    local m = all[i]
    local node, epoch = string.sub(m, 17), string.sub(m, 1, 16)
    if can_serve(all[i + 1], class) and alive(node, epoch) then send(node, epoch, 'w', class) end
  end
end
local function unqueue(id, class)
  redis.call('LREM', Q .. class, 1, id)
  if redis.call('EXISTS', Q .. class) == 0 then redis.call('SREM', CLASSES, class) end
end
-- The task is gone for good: its record and its origin's index entry.
local function forget(id, o, oe)
  redis.call('DEL', T .. id)
  if o then redis.call('SREM', P .. ':o:' .. oe .. o, id) end
end
-- A leased task's attempt failed (its provider or its node died): retry after the backoff,
-- or after the last attempt tell its origin. Returns {2, errors} when the origin is this node
-- and ``inline`` (else the origin is told by a frame, this node too).
local function fail(id, error, inline)
  local t = redis.call('HMGET', T .. id, 'o', 'oe', 'a', 'e', 'ln', 'le', 'c')
  redis.call('SREM', P .. ':l:' .. t[6] .. t[5], id)
  local attempts = (tonumber(t[3]) or 0) + 1
  local errors = t[4] and (t[4] .. '\\n' .. error) or error
  if attempts >= MAX then
    if inline and t[1] == NODE and t[2] == EPOCH then
      forget(id, t[1], t[2])
      return {2, errors}
    end
    if alive(t[1], t[2]) then
      redis.call('HSET', T .. id, 's', 'f', 'e', errors, 'a', attempts)
      redis.call('HDEL', T .. id, 'ln', 'le')
      send(t[1], t[2], 'f', id .. ' ' .. errors)
    else
      forget(id, t[1], t[2])
    end
    return {1}
  end
  local delay = backoff(attempts)
  redis.call('HSET', T .. id, 's', 'r', 'e', errors, 'a', attempts)
  redis.call('HDEL', T .. id, 'ln', 'le')
  redis.call('ZADD', DELAYED, now_ms() + delay, id)
  return {3, delay}
end
-- The client went away: the task goes; a leased one is revoked on its node (2: this node,
-- when ``inline``; else it is told by a frame, this node too).
local function cancel(id, inline)
  local t = redis.call('HMGET', T .. id, 's', 'o', 'oe', 'ln', 'le', 'c')
  if not t[1] then return 0 end
  local here = 0
  if t[1] == 'q' then
    unqueue(id, t[6])
  elseif t[1] == 'r' then
    redis.call('ZREM', DELAYED, id)
  elseif t[1] == 'l' then
    redis.call('SREM', P .. ':l:' .. t[5] .. t[4], id)
    if inline and t[4] == NODE and t[5] == EPOCH then
      here = 2
    elseif alive(t[4], t[5]) then
      send(t[4], t[5], 'c', id)
    end
  end
  forget(id, t[2], t[3])
  return here
end
-- Retries whose backoff is over go back to the front of their queue.
local function due()
  local now = now_ms()
  local ids = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now)
  local classes = {}
  for i = #ids, 1, -1 do
    local id = ids[i]
    redis.call('ZREM', DELAYED, id)
    local class = redis.call('HGET', T .. id, 'c')
    if class then
      redis.call('HSET', T .. id, 's', 'q')
      redis.call('LPUSH', Q .. class, id)
      redis.call('SADD', CLASSES, class)
      classes[class] = true
    end
  end
  local next_due = redis.call('ZRANGE', DELAYED, 0, 0, 'WITHSCORES')[2]
  return classes, next_due and math.max(0, tonumber(next_due) - now) or -1
end
local function live()
  redis.call('SADD', LIVES, ME)
end
"""

# submit(id, class, data, needs, queue_limit, take) -> -1 queue full, -2 this node is not alive,
# 1 queued (nodes that can run it are told), 2 leased to this node at once (it has a free slot).
WM_SUBMIT = Script("wm_submit", _TASKS + """
local id, class, data, needs, limit, take = ARGV[8], ARGV[9], ARGV[10], ARGV[11], tonumber(ARGV[12]), ARGV[13] == '1'
if not alive(NODE, EPOCH) then return -2 end
local queued = 0
for _, c in ipairs(redis.call('SMEMBERS', CLASSES)) do queued = queued + redis.call('LLEN', Q .. c) end
if queued >= limit then return -1 end
live()
redis.call('SADD', P .. ':o:' .. ME, id)
if take then
  redis.call('HSET', T .. id, 's', 'l', 'o', NODE, 'oe', EPOCH, 'c', class, 'd', data, 'n', needs, 'a', 0, 'ln', NODE, 'le', EPOCH)
  redis.call('SADD', P .. ':l:' .. ME, id)
  return 2
end
redis.call('HSET', T .. id, 's', 'q', 'o', NODE, 'oe', EPOCH, 'c', class, 'd', data, 'n', needs, 'a', 0)
redis.call('RPUSH', Q .. class, id)
redis.call('SADD', CLASSES, class)
notify(class)
return 1
""")

# pull(budget, class, free, class, free, ...) -> {{id, data, needs, attempts, class}, ...}, the
# classes with work, ms until the next retry is due (-1: none). Leases up to ``free`` queued
# tasks of each class (``budget`` in all) to this node; tasks whose origin died are dropped.
WM_PULL = Script("wm_pull", _TASKS + """
if not alive(NODE, EPOCH) then return {{}, {}, -1} end
local budget = tonumber(ARGV[8])
local _, next_due = due()
local out = {}
live()
for i = 9, #ARGV, 2 do
  local class, free = ARGV[i], tonumber(ARGV[i + 1])
  while free > 0 and budget > 0 do
    local id = redis.call('LPOP', Q .. class)
    if not id then break end
    local t = redis.call('HMGET', T .. id, 's', 'o', 'oe', 'd', 'n', 'a')
    if t[1] == 'q' and alive(t[2], t[3]) then
      redis.call('HSET', T .. id, 's', 'l', 'ln', NODE, 'le', EPOCH)
      redis.call('SADD', P .. ':l:' .. ME, id)
      out[#out + 1] = {id, t[4], t[5], t[6], class}
      free, budget = free - 1, budget - 1
    elseif t[1] then
      forget(id, t[2], t[3])  -- its client's node is dead
    end
  end
  if redis.call('EXISTS', Q .. class) == 0 then redis.call('SREM', CLASSES, class) end
end
return {out, redis.call('SMEMBERS', CLASSES), next_due}
""")

# kick() -> ms until the next retry is due (-1: none): due retries are queued again, and the
# nodes that can run them told.
WM_KICK = Script("wm_kick", _TASKS + """
local classes, next_due = due()
for class in pairs(classes) do notify(class) end
return next_due
""")

# complete(id, result) -> 0 not leased to this node (a late or second result: ignored), 1 done
# (sent to its origin, or its origin is dead), 2 done and its origin is this node (the caller delivers).
WM_COMPLETE = Script("wm_complete", _TASKS + """
local id, result = ARGV[8], ARGV[9]
local t = redis.call('HMGET', T .. id, 's', 'ln', 'le', 'o', 'oe')
if t[1] ~= 'l' or t[2] ~= NODE or t[3] ~= EPOCH then return 0 end
redis.call('SREM', P .. ':l:' .. ME, id)
if t[4] == NODE and t[5] == EPOCH then
  forget(id, t[4], t[5])
  return 2
end
if not alive(t[4], t[5]) then
  forget(id, t[4], t[5])
  return 1
end
redis.call('HSET', T .. id, 's', 'd', 'r', result)
redis.call('HDEL', T .. id, 'd', 'ln', 'le')
send(t[4], t[5], 'r', id .. ' ' .. result)
return 1
""")

# fail(id, error) -> {0} not leased to this node, {1} failed for good (its origin told),
# {2, errors} failed for good and its origin is this node, {3, delay_ms} retried after the delay.
WM_FAIL = Script("wm_fail", _TASKS + """
local id, error = ARGV[8], ARGV[9]
local t = redis.call('HMGET', T .. id, 's', 'ln', 'le')
if t[1] ~= 'l' or t[2] ~= NODE or t[3] ~= EPOCH then return {0} end
return fail(id, error, true)
""")

# release(id) -> 1: a task leased to this node that it could not start goes back to the front of
# its queue, without counting an attempt.
WM_RELEASE = Script("wm_release", _TASKS + """
local id = ARGV[8]
local t = redis.call('HMGET', T .. id, 's', 'ln', 'le', 'c')
if t[1] ~= 'l' or t[2] ~= NODE or t[3] ~= EPOCH then return 0 end
redis.call('SREM', P .. ':l:' .. ME, id)
redis.call('HSET', T .. id, 's', 'q')
redis.call('HDEL', T .. id, 'ln', 'le')
redis.call('LPUSH', Q .. t[4], id)
redis.call('SADD', CLASSES, t[4])
notify(t[4])
return 1
""")

# cancel(id) -> 0 unknown (done already), 1 gone, 2 gone and it was leased to this node (revoke it here).
WM_CANCEL = Script("wm_cancel", _TASKS + """
return cancel(ARGV[8], true)
""")

# ack(id): the origin has the result (or the failure): the record goes.
WM_ACK = Script("wm_ack", _TASKS + """
local id = ARGV[8]
local t = redis.call('HMGET', T .. id, 's', 'o', 'oe')
if (t[1] == 'd' or t[1] == 'f') and t[2] == NODE and t[3] == EPOCH then forget(id, t[2], t[3]) end
return 1
""")

# states(id, ...) -> for each: {state, result or errors} (what the origin re-reads when a frame may have been lost).
WM_STATES = Script("wm_states", _TASKS + """
local out = {}
for i = 8, #ARGV do
  local t = redis.call('HMGET', T .. ARGV[i], 's', 'r', 'e', 'o', 'oe')
  if t[4] ~= NODE or t[5] ~= EPOCH then
    out[#out + 1] = {'', ''}
  elseif t[1] == 'd' then
    out[#out + 1] = {'d', t[2]}
  elseif t[1] == 'f' then
    out[#out + 1] = {'f', t[3]}
  else
    out[#out + 1] = {t[1], ''}
  end
end
return out
""")

# stats(capabilities, providers, completions) -> {providers, completions} of the live nodes
# other than this one. Also announces this node's capabilities ('' : no providers).
WM_STATS = Script("wm_stats", _TASKS + """
local caps, providers, completions = ARGV[8], ARGV[9], ARGV[10]
if not alive(NODE, EPOCH) then return {0, 0} end
live()
if caps == '' then redis.call('HDEL', CAP, ME) else redis.call('HSET', CAP, ME, caps) end
if providers == '0' and completions == '0' then
  redis.call('HDEL', STATS, ME)
else
  redis.call('HSET', STATS, ME, providers .. ' ' .. completions)
end
local p, c = 0, 0
local all = redis.call('HGETALL', STATS)
for i = 1, #all, 2 do
  local m = all[i]
  if m ~= ME and alive(string.sub(m, 17), string.sub(m, 1, 16)) then
    local a, b = string.match(all[i + 1], '(%d+) (%d+)')
    p, c = p + tonumber(a), c + tonumber(b)
  end
end
return {p, c}
""")

# cap(capabilities): this node's providers' capabilities ('*': every one; '': no providers), so
# that it is told of new work at once.
WM_CAP = Script("wm_cap", _TASKS + """
if not alive(NODE, EPOCH) then return 0 end
live()
if ARGV[8] == '' then redis.call('HDEL', CAP, ME) else redis.call('HSET', CAP, ME, ARGV[8]) end
return 1
""")

# reap(limit) -> ids handled: the lives of dead nodes (and this node's own, on leave: ARGV[9] = '1').
# Their leased tasks fail (retried elsewhere, or answered after the last attempt); the tasks they
# originated are cancelled (their clients are gone: revoked where they run).
WM_REAP = Script("wm_reap", _TASKS + """
local limit, leaving = tonumber(ARGV[8]), ARGV[9] == '1'
local handled = 0
for _, m in ipairs(redis.call('SMEMBERS', LIVES)) do
  local node, epoch = string.sub(m, 17), string.sub(m, 1, 16)
  if (leaving and m == ME) or not alive(node, epoch) then
    for _, id in ipairs(redis.call('SMEMBERS', P .. ':l:' .. m)) do
      local t = redis.call('HMGET', T .. id, 's', 'ln', 'le')
      if t[1] == 'l' and t[2] == node and t[3] == epoch then
        local r = fail(id, 'broker node lost', false)
        if r[1] == 3 then
          local class = redis.call('HGET', T .. id, 'c')
          notify(class)
        end
      else
        redis.call('SREM', P .. ':l:' .. m, id)
      end
      handled = handled + 1
      if handled >= limit then return handled end
    end
    for _, id in ipairs(redis.call('SMEMBERS', P .. ':o:' .. m)) do
      local t = redis.call('HMGET', T .. id, 'o', 'oe')
      if t[1] == node and t[2] == epoch then cancel(id, false) end
      redis.call('SREM', P .. ':o:' .. m, id)
      handled = handled + 1
      if handled >= limit then return handled end
    end
    redis.call('SREM', LIVES, m)
    redis.call('HDEL', CAP, m)
    redis.call('HDEL', STATS, m)
  end
end
local dead = {}
local all = redis.call('HGETALL', CAP)
for i = 1, #all, 2 do
  if not alive(string.sub(all[i], 17), string.sub(all[i], 1, 16)) then dead[#dead + 1] = all[i] end
end
for _, m in ipairs(dead) do redis.call('HDEL', CAP, m); redis.call('HDEL', STATS, m) end
return handled
""")

TASK_SCRIPTS = (WM_SUBMIT, WM_PULL, WM_KICK, WM_COMPLETE, WM_FAIL, WM_RELEASE, WM_CANCEL, WM_ACK, WM_STATES, WM_STATS, WM_CAP, WM_REAP)
