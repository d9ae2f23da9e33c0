"""Benchmarks: `make bench` (python -m bench.run). See docs/performance.md."""
