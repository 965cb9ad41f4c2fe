"""convengine's asv benchmark suite; see docs/benchmarks.md."""
