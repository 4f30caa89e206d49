"""benchmarks/gpu_check.sh: its dry run goes through all five steps on the CPU and leaves what a borrowed GPU
machine may send back ($OUT: at most 8 plain files, at most two levels deep); without CUDA the real run refuses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
PLAIN_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def run_script(out: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def assert_out_limits(out: Path) -> None:
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 0 < len(files) <= 8, files
    for path in out.rglob("*"):
        parts = path.relative_to(out).parts
        assert len(parts) <= 3, path  # $OUT/a/b/file at most
        assert all(PLAIN_NAME.match(part) for part in parts), path
        assert not path.is_symlink(), path


@pytest.mark.slow
def test_dry_run_runs_every_step_and_respects_the_out_limits(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_script(out, "--dry-run", timeout=400)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["dry_run"] and summary["finished"] and summary["failed"] == []
    steps = {record["step"]: record for record in summary["steps"]}
    assert list(steps) == list(gpu_check.STEPS)
    for name, record in steps.items():
        assert record["status"] in (("pass", "skipped") if name == "pytest_cuda" else ("pass",)), record
        assert record["seconds"] > 0 and not record["timed_out"]
    assert (out / "pytest_cuda.xml").is_file()
    for name in gpu_check.STEPS[1:]:
        saved = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
        assert saved["status"] == "pass" and saved["result"]["ok"]

    train = json.loads((out / "train_step.json").read_text(encoding="utf-8"))["result"]
    variants = train["table"]["padded"]
    assert {"ce", "kd+cache", "pkd+cache", "gradient_kd+cache", "gradient_kd_cls+cache"} <= set(variants)
    assert all({"fp32", "bf16", "bf16_speedup"} <= set(cell) for cell in variants.values())
    assert set(variants["gradient_kd+cache"]["cache_speedup"]) == {"fp32", "bf16"}
    assert {r["settings"]["precision"] for r in train["reports"].values()} == {"fp32", "bf16"}

    assert steps["distill"]["key"]["device"] == "cpu" and steps["distill"]["key"]["dev_accuracy"] is not None
    assert steps["ddp"]["key"]["backend"] == "gloo" and steps["ddp"]["key"]["weights_match"]
    job = steps["worker_job"]["key"]
    assert job["status"] == "succeeded" and job["job_device"] == "gpu" and job["worker_consumes_only_gpu_queue"]
    assert job["trained_on"] == "cpu"
    assert_out_limits(out)


def test_real_run_refuses_without_cuda(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: the real run would start")
    out = tmp_path / "out"
    done = run_script(out, timeout=60)
    assert done.returncode == 2
    assert "CUDA is not available" in done.stderr and "--dry-run" in done.stderr
    assert not (out / "summary.json").exists()


def test_a_step_past_its_timeout_is_ended_with_its_process_group(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    with (tmp_path / "log.txt").open("w", encoding="utf-8") as log:
        code, tail, timed_out = gpu_check.run_logged(command, 2, log, "sleep")
    assert timed_out and code != 0 and tail == ["started"]
    assert "started" in (tmp_path / "log.txt").read_text(encoding="utf-8")


def test_step_status_and_junit_counts(tmp_path: Path) -> None:
    assert gpu_check.step_status(0, {"ok": True}, False) == "pass"
    assert gpu_check.step_status(0, {"ok": True}, True) == "fail"
    assert gpu_check.step_status(1, None, False) == "fail"
    assert gpu_check.step_status(0, {"skipped": True, "ok": False}, False) == "skipped"
    xml = tmp_path / "junit.xml"
    xml.write_text('<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1"/></testsuites>',
                   encoding="utf-8")
    assert gpu_check.junit_counts(xml) == {"tests": 3, "failures": 1, "errors": 0, "skipped": 1}
