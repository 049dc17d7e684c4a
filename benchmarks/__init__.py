"""Benchmarks: speed and memory measured against a peer in the same run. Results go to BENCHMARKS.md."""
