"""pixelmill's benchmark suite: `python -m bench.run [--quick]` (see docs/benchmarks.md)."""
