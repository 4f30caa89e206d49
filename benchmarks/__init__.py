"""Benchmarks of shared/docs/BENCHMARKS.md: `python -m benchmarks.train_step`, `python -m benchmarks.quality`.

Each script prints a table and writes JSON + Markdown under `benchmarks/results/`. None is a unit test;
`tests/benchmarks/test_benchmarks.py` runs each on tiny settings so they do not rot.
"""
