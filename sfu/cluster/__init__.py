"""Several nodes (each `sfu serve`: signalling and its shards) sharing one directory.

``directory.Directory`` is what they share: nodes with their addresses and load,
which node a room lives on, and the room's published tracks. ``MemoryDirectory``
is the embedded default (one node, nothing else to run); ``RedisDirectory``
(``--redis-url``) is the same for a cluster.
"""
