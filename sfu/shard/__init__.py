"""One shard: a process, a core, a UDP port, all its peers multiplexed on it."""
