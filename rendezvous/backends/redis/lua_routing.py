"""The overlay's scripts (:mod:`.routing`): every shared transition is one atomic script.

Keys of a routing store named ``ns`` (``P = <prefix>:{<ns>}``; every key is in ARGV, as in
:mod:`.lua`):

* ``P:slots`` HASH: slot (4 hex digits, the first four of every endpoint id the node gives
  out) → ``epoch .. node`` of the node that holds it. A slot counts only while its node is
  alive with that epoch; a dead node's slot may be taken by another node (its endpoints died
  with it). Also the list of nodes that hear the root events.
* ``P:roots`` ZSET: open roots, member ``epoch (16) .. token (16 hex) .. node``, score = the
  version at which it opened (connection order, cluster-wide).
* ``P:cur`` STRING: the member of the current root (absent: none).
* ``P:ver`` STRING: the version of ``cur``, ``max(last + 1, server time in µs)``, so that it
  keeps growing after the keys were deleted (everyone left) and made again.

Every key gets ``PEXPIRE ttl`` (2 × node_ttl) from every script that writes, and from every
live node's beat (``ov_sync``): what a cluster leaves when all its nodes die is gone after that.

Root policies (the three rules of :class:`rendezvous.core.routing.Router`, for the cluster):
on open, ``reject`` refuses while a live root is open, else the newcomer is current; when the
current root closes or its node dies, ``failover`` makes the newest live root current, the
others none. Every change of ``cur`` is announced (``e`` frames) to every node holding a slot.
Bus frames (msgpack, as :mod:`.lua`'s): ``[kind, ns, epoch, token, payload]`` with kind ``e``
(token = version, payload = the current root's member or ""), ``m`` (an endpoint's message:
payload = destination .. origin .. data; published by ``ov_send``) and ``t`` (a message for a
root, published by the sending node itself: token = the root's token).
"""

from __future__ import annotations

from rendezvous.backends.redis.mux import Script

# ARGV: P, node-key prefix, inbox prefix, ns, this node, its epoch, root policy, ttl_ms, then the script's own.
_OVERLAY = """
local P, NK, IB, NS, NODE, EPOCH, POLICY, TTL = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local SLOTS, ROOTS, CUR, VER = P .. ':slots', P .. ':roots', P .. ':cur', P .. ':ver'
local ME = EPOCH .. NODE
local function alive(node, epoch)
  return redis.call('GET', NK .. node) == epoch
end
local function holder_alive(h)
  return alive(string.sub(h, 17), string.sub(h, 1, 16))
end
local function root_alive(m)
  return alive(string.sub(m, 33), string.sub(m, 1, 16))
end
local function version()
  local t = redis.call('TIME')
  local v = math.max((tonumber(redis.call('GET', VER)) or 0) + 1, tonumber(t[1]) * 1000000 + tonumber(t[2]))
  v = string.format('%.0f', v)
  redis.call('SET', VER, v, 'PX', TTL)
  return v
end
local function announce()
  local v = version()
  local cur = redis.call('GET', CUR) or ''
  for _, h in ipairs(redis.call('HVALS', SLOTS)) do
    local node, epoch = string.sub(h, 17), string.sub(h, 1, 16)
    if alive(node, epoch) then
      redis.call('PUBLISH', IB .. node, cmsgpack.pack({'e', NS, epoch, v, cur}))
    end
  end
end
-- Roots of dead nodes leave; a current root that left (closed or dead) is replaced by the policy.
local function settle(changed)
  for _, m in ipairs(redis.call('ZRANGE', ROOTS, 0, -1)) do
    if not root_alive(m) then redis.call('ZREM', ROOTS, m) end
  end
  local cur = redis.call('GET', CUR)
  if cur and not redis.call('ZSCORE', ROOTS, cur) then
    redis.call('DEL', CUR)
    if POLICY == 'failover' then
      local newest = redis.call('ZREVRANGE', ROOTS, 0, 0)[1]
      if newest then redis.call('SET', CUR, newest) end
    end
    changed = true
  end
  if changed then announce() end
end
local function prune_slots()
  local all = redis.call('HGETALL', SLOTS)
  for i = 1, #all, 2 do
    if not holder_alive(all[i + 1]) then redis.call('HDEL', SLOTS, all[i]) end
  end
end
local function keep()
  for _, k in ipairs({SLOTS, ROOTS, CUR, VER}) do redis.call('PEXPIRE', k, TTL) end
end
local function state(status)
  return {status, redis.call('GET', VER) or '0', redis.call('GET', CUR) or ''}
end
"""

# sync(slot) -> {status, version, current}: status 1 = this node holds ``slot`` (taken now if it
# was free or its holder dead; any other slot of this node is given up), 0 = another live node
# holds it, -1 = this node is not alive with its epoch (it is about to fence itself). Run at
# start, at every beat (dead nodes' slots and roots leave, the keys' TTLs are renewed, and the
# current root is read again: an event lost on the bus is made up for) and after the bus reconnects.
OV_SYNC = Script("ov_sync", _OVERLAY + """
if not alive(NODE, EPOCH) then return {-1} end
local slot = ARGV[9]
prune_slots()
local h = redis.call('HGET', SLOTS, slot)
if h and h ~= ME then
  settle(false)
  keep()
  return state(0)
end
local all = redis.call('HGETALL', SLOTS)
for i = 1, #all, 2 do
  if all[i] ~= slot and string.sub(all[i + 1], 17) == NODE then redis.call('HDEL', SLOTS, all[i]) end
end
redis.call('HSET', SLOTS, slot, ME)
settle(false)
keep()
return state(1)
""")

# root_open(token) -> {1, version, current} accepted (the newcomer is current), {0} refused
# (``reject`` and a live root is open), {-1} this node is not alive with its epoch.
OV_ROOT_OPEN = Script("ov_root_open", _OVERLAY + """
if not alive(NODE, EPOCH) then return {-1} end
settle(false)
if POLICY == 'reject' and redis.call('ZCARD', ROOTS) > 0 then
  keep()
  return {0}
end
local m = EPOCH .. ARGV[9] .. NODE
redis.call('ZADD', ROOTS, version(), m)
redis.call('SET', CUR, m)
announce()
keep()
return state(1)
""")

# root_close(token) -> {removed (1/0), version, current}
OV_ROOT_CLOSE = Script("ov_root_close", _OVERLAY + """
local removed = redis.call('ZREM', ROOTS, EPOCH .. ARGV[9] .. NODE)
settle(false)
keep()
return state(removed)
""")

# leave() -> 1: a clean stop. This node's roots and slot go (the policy picks the next root), dead
# nodes' too; the last node to leave deletes the keys.
OV_LEAVE = Script("ov_leave", _OVERLAY + """
for _, m in ipairs(redis.call('ZRANGE', ROOTS, 0, -1)) do
  if string.sub(m, 33) == NODE then redis.call('ZREM', ROOTS, m) end
end
local all = redis.call('HGETALL', SLOTS)
for i = 1, #all, 2 do
  if string.sub(all[i + 1], 17) == NODE then redis.call('HDEL', SLOTS, all[i]) end
end
prune_slots()
settle(false)
if redis.call('EXISTS', SLOTS, ROOTS) == 0 then
  redis.call('DEL', CUR, VER)
else
  keep()
end
return 1
""")

# send(P, node-key prefix, inbox prefix, ns, slot, frame) -> receivers: an endpoint's message to
# the node holding the destination's slot (0: no live node holds it, the message is dropped).
OV_SEND = Script("ov_send", """
local h = redis.call('HGET', ARGV[1] .. ':slots', ARGV[5])
if not h then return 0 end
local node, epoch = string.sub(h, 17), string.sub(h, 1, 16)
if redis.call('GET', ARGV[2] .. node) ~= epoch then return 0 end
return redis.call('PUBLISH', ARGV[3] .. node, cmsgpack.pack({'m', ARGV[4], epoch, 0, ARGV[6]}))
""")

ROUTING_SCRIPTS = (OV_SYNC, OV_ROOT_OPEN, OV_ROOT_CLOSE, OV_LEAVE, OV_SEND)
