"""Benchmarks (`make bench`): figures live here, never in timed tests."""
