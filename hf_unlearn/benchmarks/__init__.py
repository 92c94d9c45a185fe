"""Benchmarks of hf_unlearn on bundled data."""
