#!/usr/bin/env bash
# The CUDA path in one command (issue 24): the CUDA-marked tests, train_step for every method in fp32 and
# bf16, a short `gkd distill`, two data-parallel processes against one, and a worker job on the `gpu` queue.
#
#   bash benchmarks/gpu_check.sh                  # on a CUDA machine (refuses without CUDA); ~5 min on one H200
#   bash benchmarks/gpu_check.sh --dry-run        # the same flow on the CPU, tiny, ~1 min on 2 cores
#   bash benchmarks/gpu_check.sh --only ddp,worker_job --timeout-scale 2
#
# Results go to $OUT when set, else benchmarks/results/gpu: at most 7 files (summary.json, one file per step,
# gpu_check.log). Exit status 1 when a step failed, 2 when CUDA is missing without --dry-run.
# The logic (steps, timeouts, records) is in benchmarks/gpu_check.py; run `--help` for every option.
# PYTHON picks the interpreter (default: the checkout's .venv, else python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
args=("$@")
if [[ -n "${OUT:-}" ]]; then args=(--out "$OUT" "${args[@]}"); fi
exec "$PYTHON" -m benchmarks.gpu_check "${args[@]}"
