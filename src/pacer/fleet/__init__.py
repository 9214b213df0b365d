"""Several pacers sharing one upstream's limits through Redis.

``store`` talks to Redis (coredis, Lua ``scripts``), ``member`` bridges one
upstream's limiter to the shared controller, ``degraded`` is the safe local share
while Redis is away, ``state`` what the state file says of it, and
:class:`pacer.fleet.fleet.Fleet` runs all of a node's members.
"""
