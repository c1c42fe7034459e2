"""Benchmarks: ``python -m bench.fanout`` and friends (see bench/README.md)."""
