"""Benchmark scripts (run by hand, print markdown tables). See benchmarks/README.md."""
