"""Smoke tests of the service benchmarks (`benchmarks.api`, `benchmarks.end_to_end`) on tiny settings.

They measure nothing; they keep the scripts from rotting: a real uvicorn (and Celery worker) starts, the load
and the jobs run, and the JSON + Markdown they promise are written. The API benchmark needs PostgreSQL and
Redis on loopback and is skipped without them; the end-to-end one runs on SQLite + the embedded broker.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks import api, api_ab, api_profile, end_to_end
from tests.support.service import reachable

pytestmark = pytest.mark.slow  # each starts uvicorn (and a Celery worker)


@pytest.mark.services
@pytest.mark.parametrize("driver", ["httpx", "wrk"])
def test_api_benchmark_tiny(driver: str, tmp_path: Path) -> None:
    if not (reachable(5432) and reachable(6379)):
        pytest.skip("PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) are needed")
    if driver == "wrk" and shutil.which("wrk") is None:
        pytest.skip("wrk is not installed")
    out = tmp_path / "api.json"
    report = api.main(["--tiny", "--driver", driver, "--out", str(out)])

    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(report))
    assert {"environment", "settings", "runs", "summary", "streams", "targets"} <= set(saved)
    assert saved["settings"]["driver"] == driver and saved["settings"]["workers"] == 1
    assert {row["endpoint"] for row in saved["summary"]} == {"job_status", "list"}
    for row in saved["summary"]:
        assert row["requests"] > 0 and row["rps"] > 0 and row["errors"] == 0
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["streams_min_open"] == saved["settings"]["streams"]
    assert saved["streams"]["opened"] == saved["settings"]["streams"] and saved["streams"]["failure_count"] == 0
    assert saved["answers"]["list_items"] == 20
    passed = {t["name"]: t["pass"] for t in saved["targets"]}
    assert passed["zero errors (all endpoints, all rounds)"] is True
    assert passed[f"all {saved['settings']['streams']} SSE streams open throughout"] is True
    assert {"GET /v1/jobs/{id} server CPU < 0.6 ms/req", "GET /v1/jobs?limit=N >= 1,000 req/s"} <= set(passed)
    markdown = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "python -m benchmarks.api" in markdown and "GET /v1/jobs/{id}" in markdown


@pytest.mark.services
def test_api_profile_tiny(tmp_path: Path) -> None:
    if not (reachable(5432) and reachable(6379)):
        pytest.skip("PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) are needed")
    if api_profile.py_spy() is None:
        pytest.skip("py-spy is not installed")
    out = tmp_path / "profile.json"
    report = api_profile.main(["--seconds", "2", "--jobs", "20", "--out", str(out)])

    assert json.loads(out.read_text(encoding="utf-8")) == json.loads(json.dumps(report))
    assert report["load"]["requests"] > 0 and report["load"]["errors"] == 0
    assert report["samples"] > 0
    # The job read itself runs in the read thread; a profile that never saw it sampled the wrong process.
    assert report["phases"]["the read in its thread (query + serialisation)"] > 0
    assert "GET /v1/jobs/{id}" in out.with_suffix(".md").read_text(encoding="utf-8")


def test_profile_aggregation_counts_each_frame_once_per_stack() -> None:
    collapsed = ("main (a.py:1);run_read (app/reads.py:5);run_read (app/reads.py:9);execute (b.py:3) 3\n"
                 "main (a.py:1);send (c.py:2) 1\n"
                 "junk line without a count\n")
    total, inclusive, own = api_profile.aggregate(collapsed)
    assert total == 4
    assert inclusive["main (a.py)"] == 4 and inclusive["run_read (app/reads.py)"] == 3
    assert own["execute (b.py)"] == 3 and own["send (c.py)"] == 1
    assert api_profile.phase_shares(total, inclusive)["the read in its thread (query + serialisation)"] == 75.0


@pytest.mark.services
def test_api_ab_runs_two_checkouts_side_by_side(tmp_path: Path) -> None:
    if not (reachable(5432) and reachable(6379)):
        pytest.skip("PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) are needed")
    out = tmp_path / "ab.json"
    report = api_ab.main(["--base", str(api.REPO), "--rounds", "1", "--seconds", "1", "--jobs", "20",
                          "--streams", "3", "--concurrency", "2", "--out", str(out)])
    assert json.loads(out.read_text(encoding="utf-8")) == json.loads(json.dumps(report))
    assert [row["endpoint"] for row in report["summary"]] == ["job_status", "list", "sse_open"]
    assert {(run["side"], run["endpoint"]) for run in report["runs"]} == {
        (side, endpoint) for side in ("base", "new") for endpoint in ("job_status", "list", "sse_open")}
    assert all(row["base"] > 0 and row["new"] > 0 for row in report["summary"])


def test_api_ab_summary_pairs_medians_of_each_side() -> None:
    runs = [{"side": side, "endpoint": "job_status", "cpu_ms_per_request": value}
            for side, value in (("base", 1.0), ("base", 3.0), ("base", 2.0), ("new", 1.5), ("new", 0.5))]
    runs.append({"side": "base", "endpoint": "list", "cpu_ms_per_request": 2.0})  # no "new" run: no row
    assert api_ab.summarise(runs) == [{"endpoint": "job_status", "base": 2.0, "base_runs": [1.0, 3.0, 2.0],
                                       "new": 1.0, "new_runs": [1.5, 0.5], "change_percent": -50.0}]


def test_end_to_end_benchmark_tiny(tmp_path: Path) -> None:
    out = tmp_path / "e2e.json"
    report = end_to_end.main(["--tiny", "--train-rows", "24", "--repeats", "1", "--stack", "sqlite", "--threads", "1",
                              "--out", str(out)])

    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(report))
    assert [(r["repeat"], r["kind"]) for r in saved["runs"]] == [(1, "library"), (1, "service")]
    assert all(r["seconds"] > 0 and r["cache_warm"] for r in saved["runs"])
    service = saved["runs"][1]
    assert service["checkpoint_bytes"] > 0 and service["events"] >= 4
    assert service["phases"]["queue_s"] is not None and service["phases"]["download_s"] >= 0
    # Each run's CPU comes from the process that trained: the worker for the service, this process for the
    # library (Linux /proc); a training that used no CPU would mean the wrong process was read.
    for run in saved["runs"]:
        assert run["cpu_s"]["trainer_user"] + run["cpu_s"]["trainer_system"] > 0, run
    assert {"api", "client", "databases"} <= set(service["cpu_s"])
    summary = saved["summary"]
    # From the unrounded run times: the stored medians are rounded to 1 ms, which on a 0.05 s tiny run moves
    # the ratio by more than 1 %.
    assert summary["ratio"] > 0 and summary["ratio"] == pytest.approx(
        service["seconds"] / saved["runs"][0]["seconds"], rel=1e-3)
    assert {t["name"].split(" (")[0] for t in saved["targets"]} >= {"service overhead < 10 %"}
    markdown = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "python -m benchmarks.end_to_end" in markdown and "overhead" in markdown
    assert "CPU time per run" in markdown
