"""Benchmarks: `make bench` runs them; see docs/benchmarks.md."""
