"""The pieces of the benchmark harness; `benchmarks.run` puts them together."""
