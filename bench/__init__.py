"""Benchmarks (not tests): paired ratios with 95% intervals, each run saved as JSON under
bench/results/ (`bench.results`), docs/benchmarks.md generated from them (`bench.report`)."""
