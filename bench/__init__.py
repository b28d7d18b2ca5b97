"""Benchmarks (not tests): each prints a table of ratios measured in one run."""
