"""Benchmark suites of idm-med: ``python -m benchmarks NAME`` from the repository root."""
