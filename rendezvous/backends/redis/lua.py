"""The Lua scripts: every shared transition is one atomic script (Redis ≤ 7.0 commands only).

Every key is passed in ARGV, built from prefixes (standalone Redis and Sentinel; a Cluster
would need the liveness keys under each store's hash tag). Pairing scripts share the first
six arguments: key prefix ``P`` (``<prefix>:{<ns>}``), node-key prefix, inbox prefix, the
store's name, this node's id and its epoch.

Keys of a pairing store: a pool is one part per node, ``P:pool:<pool>:<node>`` ZSET of that
node's waiters (score = order, member = 16 hex digits of a ticket + the sid, so equal orders pop
first come, first served), and ``P:pn:<pool>`` SET of the nodes that have a part. A claim draws
the lowest order of all parts, this node's part on a tie (Go's heap orders equal ``Clients`` in
no particular way either): the offer, and then the answer of a proxy that answers where it
polled, stay on one node, with no bus frame. ``P:w:<sid>`` HASH
{state = waiting | matched | answered | done, node, epoch, wt (the waiter's token on its
node), pool (``<pool>:<node>``: its part), m (its pool member), info, an/ae/at (the asker's node, epoch, token), offer,
answer}; ``P:seq`` ticket counter; ``P:n:<node>`` SET of sids that node's waiters hold
(waiting or matched); ``P:a:<node>`` SET of sids that node's askers matched (matched or
answered); ``P:nodes`` SET of nodes that have such sets (for the reaper). The two index sets
lose a member with the script that ends its state; what a record's TTL ends instead (an asker
whose node died, a call lost while Redis was away) is reaped, forgotten or tidied.
Bus frames (msgpack): ``[kind, ns, epoch, token, payload]`` with kind ``o`` (an offer for a
waiter), ``a`` (an answer for an asker), ``r`` (a waiter replaced by a reused sid).
"""

from __future__ import annotations

from rendezvous.backends.redis.mux import Script

NODE_BEAT = Script("node_beat", """
local cur = redis.call('GET', ARGV[1])
if cur == ARGV[2] then redis.call('PEXPIRE', ARGV[1], ARGV[3]) return 1 end
if not cur then return 0 end
return -1
""")

NODE_LEAVE = Script("node_leave", """
if redis.call('GET', ARGV[1]) == ARGV[2] then redis.call('DEL', ARGV[1]) end
return 1
""")

_PAIRING = """
local P, NK, IB, NS, NODE, EPOCH = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local function alive(node, epoch)
  return node and epoch and redis.call('GET', NK .. node) == epoch
end
local function publish(node, kind, epoch, token, payload)
  redis.call('PUBLISH', IB .. node, cmsgpack.pack({kind, NS, epoch, token, payload}))
end
local function left(part, node)  -- a waiter left the part ``<pool>:<node>``: an empty part leaves its pool
  if redis.call('EXISTS', P .. ':pool:' .. part) == 0 then
    redis.call('SREM', P .. ':pn:' .. string.sub(part, 1, #part - #node - 1), node)
  end
end
"""

# wait(token, sid, pool, order, info, ttl_ms) -> the token of this node's replaced waiter, or nil;
# -1 while this node is not alive with its epoch (declared dead, not fenced yet): nothing is recorded
SF_WAIT = Script("sf_wait", _PAIRING + """
if not alive(NODE, EPOCH) then return -1 end
local token, sid, pool = ARGV[7], ARGV[8], ARGV[9]
local wkey = P .. ':w:' .. sid
local old = redis.call('HMGET', wkey, 'state', 'node', 'epoch', 'wt', 'pool', 'm')
local replaced = false
if old[1] == 'waiting' then
  redis.call('ZREM', P .. ':pool:' .. old[5], old[6])
  left(old[5], old[2])
  redis.call('SREM', P .. ':n:' .. old[2], sid)
  if old[2] == NODE and old[3] == EPOCH then
    replaced = old[4]
  elseif alive(old[2], old[3]) then
    publish(old[2], 'r', old[3], old[4], '')
  end
end
local member = string.format('%016x', redis.call('INCR', P .. ':seq')) .. sid
local part = pool .. ':' .. NODE
if old[1] then redis.call('DEL', wkey) end  -- (no state: no record)
redis.call('HSET', wkey, 'state', 'waiting', 'node', NODE, 'epoch', EPOCH, 'wt', token, 'pool', part,
           'm', member, 'info', ARGV[11])
redis.call('PEXPIRE', wkey, ARGV[12])
redis.call('ZADD', P .. ':pool:' .. part, ARGV[10], member)
redis.call('SADD', P .. ':pn:' .. pool, NODE)
redis.call('SADD', P .. ':n:' .. NODE, sid)
redis.call('SADD', P .. ':nodes', NODE)
return replaced
""")

# claim(token, offer, match_ttl_ms, max_pops, pool...) -> {sid, node, epoch, token, info} | nil (none) | 1 (call again)
# From the first pool that has a waiter: the lowest order of the nodes' parts, this node's on a tie
# (an empty part leaves the pool's set of parts).
# A matched record lives match_ttl_ms (longer than either side's remaining time) unless ended first.
# A waiter counts only while its node is alive with the epoch it registered under: a dead or
# fenced node's waiters are dropped where they are found. The offer is published to the
# waiter's node, and kept in the record for that node's withdraw (the exact race, see there).
SF_CLAIM = Script("sf_claim", _PAIRING + """
if not alive(NODE, EPOCH) then return false end
local budget = tonumber(ARGV[10])
for i = 11, #ARGV do
  local parts = P .. ':pn:' .. ARGV[i]
  while true do
    local pool, owner, least, last = nil, nil, nil, false
    for _, node in ipairs(redis.call('SMEMBERS', parts)) do
      local key = P .. ':pool:' .. ARGV[i] .. ':' .. node
      local first = redis.call('ZRANGE', key, 0, 1, 'WITHSCORES')
      if #first == 0 then
        redis.call('SREM', parts, node)
      else
        local order = tonumber(first[2])
        if least == nil or order < least or (order == least and node == NODE) then
          pool, owner, least, last = key, node, order, #first == 2
        end
      end
    end
    if pool == nil then break end
    local member = redis.call('ZPOPMIN', pool)[1]
    if last then redis.call('SREM', parts, owner) end  -- its part is empty now
    local sid = string.sub(member, 17)
    local wkey = P .. ':w:' .. sid
    local w = redis.call('HMGET', wkey, 'state', 'node', 'epoch', 'wt', 'm', 'info')
    if w[1] == 'waiting' and w[5] == member then
      if (w[2] == NODE and w[3] == EPOCH) or alive(w[2], w[3]) then  -- (this node is: checked above)
        redis.call('HSET', wkey, 'state', 'matched', 'an', NODE, 'ae', EPOCH, 'at', ARGV[7], 'offer', ARGV[8])
        redis.call('PEXPIRE', wkey, ARGV[9])
        redis.call('SADD', P .. ':a:' .. NODE, sid)
        redis.call('SADD', P .. ':nodes', NODE)
        if w[2] ~= NODE or w[3] ~= EPOCH then publish(w[2], 'o', w[3], w[4], ARGV[8]) end
        return {sid, w[2], w[3], w[4], w[6]}
      end
      redis.call('DEL', wkey)
      redis.call('SREM', P .. ':n:' .. w[2], sid)
    end
    budget = budget - 1
    if budget <= 0 then return 1 end
  end
end
return false
""")

# withdraw(token, sid) -> 1 (left its pool) | {offer} (a claim won the race: deliver it) | 0 (not ours)
SF_WITHDRAW = Script("sf_withdraw", _PAIRING + """
local sid = ARGV[8]
local wkey = P .. ':w:' .. sid
local w = redis.call('HMGET', wkey, 'state', 'node', 'epoch', 'wt', 'pool', 'm', 'offer')
if w[2] ~= NODE or w[3] ~= EPOCH or w[4] ~= ARGV[7] then return 0 end
if w[1] == 'waiting' then
  redis.call('ZREM', P .. ':pool:' .. w[5], w[6])
  left(w[5], NODE)
  redis.call('DEL', wkey)
  redis.call('SREM', P .. ':n:' .. NODE, sid)
  return 1
end
return {w[7]}
""")

# answer(sid, answer, match_ttl_ms) -> {asker node, epoch, token, waiter info} | nil (asker gone)
SF_ANSWER = Script("sf_answer", _PAIRING + """
local sid = ARGV[7]
local wkey = P .. ':w:' .. sid
local w = redis.call('HMGET', wkey, 'state', 'an', 'ae', 'at', 'info', 'node')
if w[1] ~= 'matched' then return false end
redis.call('SREM', P .. ':n:' .. w[6], sid)
local here = w[2] == NODE and w[3] == EPOCH  -- the asker is this node's (a fenced node's tokens are gone with it)
if not here and not alive(w[2], w[3]) then
  redis.call('DEL', wkey)
  redis.call('SREM', P .. ':a:' .. w[2], sid)
  return false
end
if here then
  redis.call('DEL', wkey)
  redis.call('SREM', P .. ':a:' .. NODE, sid)
else
  redis.call('HSET', wkey, 'state', 'answered', 'answer', ARGV[8])
  redis.call('PEXPIRE', wkey, ARGV[9])
  publish(w[2], 'a', w[3], w[4], ARGV[8])
end
return {w[2], w[3], w[4], w[5]}
""")

# asker_end(token, sid, match_ttl_ms): the asker hung up or its answer time ran out. A 'done' record
# stays only for the waiter's withdraw (which may still come), then expires.
# -> 1 (the match ends unanswered) | {answer} (answered meanwhile: deliver it) | 0 (not ours)
SF_ASKER_END = Script("sf_asker_end", _PAIRING + """
local sid = ARGV[8]
local wkey = P .. ':w:' .. sid
local w = redis.call('HMGET', wkey, 'state', 'an', 'ae', 'at', 'answer', 'node')
if w[2] ~= NODE or w[3] ~= EPOCH or w[4] ~= ARGV[7] then return 0 end
if w[1] == 'matched' then
  redis.call('HSET', wkey, 'state', 'done')
  if ARGV[9] then redis.call('PEXPIRE', wkey, ARGV[9]) end
  redis.call('SREM', P .. ':n:' .. w[6], sid)
  redis.call('SREM', P .. ':a:' .. NODE, sid)
  return 1
end
if w[1] == 'answered' then
  redis.call('DEL', wkey)
  redis.call('SREM', P .. ':a:' .. NODE, sid)
  return {w[5]}
end
return 0
""")

# known(node) -> infos of the waiters of live nodes (of ``node`` only, unless it is '') that wait or are
# matched (drops stale set members)
SF_KNOWN = Script("sf_known", _PAIRING + """
local out = {}
local nodes = ARGV[7] ~= '' and {ARGV[7]} or redis.call('SMEMBERS', P .. ':nodes')
for _, node in ipairs(nodes) do
  local epoch = redis.call('GET', NK .. node)
  if epoch then
    local nkey = P .. ':n:' .. node
    for _, sid in ipairs(redis.call('SMEMBERS', nkey)) do
      local w = redis.call('HMGET', P .. ':w:' .. sid, 'state', 'node', 'epoch', 'info')
      if (w[1] == 'waiting' or w[1] == 'matched') and w[2] == node and w[3] == epoch then
        out[#out + 1] = w[4]
      else
        redis.call('SREM', nkey, sid)
      end
    end
  end
end
return out
""")

# reap(max) -> 1 (more to do) | 0: what dead nodes left. Their waiting records leave the pools
# (claims already skip them, so correctness never waits for this); the records their askers
# matched are dropped (an answer to them is refused either way, "client gone"). Records of a dead
# node's waiters that a live asker matched stay: that proxy may still answer through a live node.
SF_REAP = Script("sf_reap", _PAIRING + """
local budget = tonumber(ARGV[7])
for _, node in ipairs(redis.call('SMEMBERS', P .. ':nodes')) do
  if redis.call('EXISTS', NK .. node) == 0 then
    local nkey, akey = P .. ':n:' .. node, P .. ':a:' .. node
    for _, sid in ipairs(redis.call('SPOP', nkey, budget)) do
      local wkey = P .. ':w:' .. sid
      local w = redis.call('HMGET', wkey, 'state', 'node', 'pool', 'm')
      if w[1] == 'waiting' and w[2] == node then
        redis.call('ZREM', P .. ':pool:' .. w[3], w[4])
        left(w[3], node)
        redis.call('DEL', wkey)
      end
      budget = budget - 1
    end
    for _, sid in ipairs(redis.call('SPOP', akey, math.max(budget, 1))) do
      local wkey = P .. ':w:' .. sid
      local w = redis.call('HMGET', wkey, 'state', 'an', 'node')
      if (w[1] == 'matched' or w[1] == 'answered') and w[2] == node then
        redis.call('SREM', P .. ':n:' .. w[3], sid)
        redis.call('DEL', wkey)
      end
      budget = budget - 1
    end
    if redis.call('SCARD', nkey) == 0 and redis.call('SCARD', akey) == 0 then redis.call('SREM', P .. ':nodes', node) end
    if budget <= 0 then return 1 end
  end
end
return 0
""")

# forget(old_epoch, max) -> 1 (more to do) | 0: after this node was fenced, what it held under
# the old epoch (another node may have reaped it already, or not if this node came back before a
# reap ran): its waiting records leave their pools, the records its askers matched are dropped.
# Matched records of its waiters stay: their proxy may still answer through a live node.
SF_FORGET = Script("sf_forget", _PAIRING + """
local old, budget = ARGV[7], tonumber(ARGV[8])
local nkey, akey = P .. ':n:' .. NODE, P .. ':a:' .. NODE
for _, sid in ipairs(redis.call('SMEMBERS', nkey)) do
  local wkey = P .. ':w:' .. sid
  local w = redis.call('HMGET', wkey, 'state', 'node', 'epoch', 'pool', 'm')
  if w[2] ~= NODE then
    redis.call('SREM', nkey, sid)
  elseif w[3] == old then
    if w[1] == 'waiting' then
      redis.call('ZREM', P .. ':pool:' .. w[4], w[5])
      left(w[4], NODE)
      redis.call('DEL', wkey)
    end
    redis.call('SREM', nkey, sid)
    budget = budget - 1
    if budget <= 0 then return 1 end
  end
end
for _, sid in ipairs(redis.call('SMEMBERS', akey)) do
  local wkey = P .. ':w:' .. sid
  local w = redis.call('HMGET', wkey, 'state', 'an', 'ae', 'node')
  if w[2] ~= NODE then
    redis.call('SREM', akey, sid)
  elseif w[3] == old then
    redis.call('SREM', P .. ':n:' .. w[4], sid)
    redis.call('DEL', wkey)
    redis.call('SREM', akey, sid)
    budget = budget - 1
    if budget <= 0 then return 1 end
  end
end
return 0
""")

# tidy(cursor_n, cursor_a, count) -> {cursor_n, cursor_a}: a few members of this node's index sets
# (SSCAN, ``count`` at a time, resumed at the next call) whose record has gone another way (its
# TTL ran out while a call was lost, say) leave their set. Run at every beat, so no member
# outlives its record for long whatever happened, and no call runs long.
SF_TIDY = Script("sf_tidy", _PAIRING + """
local count = ARGV[9]
local nkey, akey = P .. ':n:' .. NODE, P .. ':a:' .. NODE
local n = redis.call('SSCAN', nkey, ARGV[7], 'COUNT', count)
for _, sid in ipairs(n[2]) do
  local w = redis.call('HMGET', P .. ':w:' .. sid, 'state', 'node')
  if w[2] ~= NODE or (w[1] ~= 'waiting' and w[1] ~= 'matched') then redis.call('SREM', nkey, sid) end
end
local a = redis.call('SSCAN', akey, ARGV[8], 'COUNT', count)
for _, sid in ipairs(a[2]) do
  local w = redis.call('HMGET', P .. ':w:' .. sid, 'state', 'an')
  if w[2] ~= NODE or (w[1] ~= 'matched' and w[1] ~= 'answered') then redis.call('SREM', akey, sid) end
end
return {n[1], a[1]}
""")

PAIRING_SCRIPTS = (SF_WAIT, SF_CLAIM, SF_WITHDRAW, SF_ANSWER, SF_ASKER_END, SF_KNOWN, SF_REAP, SF_FORGET, SF_TIDY)
ALL = (NODE_BEAT, NODE_LEAVE, *PAIRING_SCRIPTS)
