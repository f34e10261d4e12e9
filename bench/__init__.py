"""Benchmarks, run as modules: `python -m bench.generation --json`. Results go to bench/results/."""
