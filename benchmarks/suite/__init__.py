"""The task suite (`python -m benchmarks.suite`, `make bench-suite`): several tasks, each with its own teacher."""
