"""Benchmarks: each compares our code with the strongest alternative in the same run."""
