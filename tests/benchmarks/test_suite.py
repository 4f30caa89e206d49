"""The task suite's plan, its short-job cut and its report (the runs themselves take hours: benchmarks/suite)."""

from __future__ import annotations

import csv
from pathlib import Path

from benchmarks.suite import report as suite_report
from benchmarks.suite.__main__ import head_rows, parse_args, plan_runs
from benchmarks.suite.tasks import TASKS


def test_the_plan_covers_every_task_depth_and_method_seed_major():
    runs = plan_runs(parse_args(["--seeds", "2"]))
    keys = [run["key"] for run in runs]
    assert len(keys) == len(set(keys))
    assert {run["task"] for run in runs} == set(TASKS)
    assert {(run["task"], run["layers"]) for run in runs if run["layers"] == 2} == {("movie-2", 2), ("nyt-3", 2)}
    assert [run["method"] for run in runs if run["method"] == "gradient_kd_cls"] == ["gradient_kd_cls"] * 2
    first_seed2 = next(i for i, run in enumerate(runs) if run["seed"] == 2)
    assert all(run["seed"] == 1 for run in runs[:first_seed2])  # a whole table exists after the first seed


def test_head_rows_keeps_the_header_and_the_first_rows(tmp_path: Path):
    source = tmp_path / "train.csv"
    with source.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["text", "label"], *[[f"t{i}", "a" if i % 2 else "b"] for i in range(10)]])
    record = head_rows(source, 4, tmp_path / "cut.csv")
    assert record["rows"] == 4 and len(record["sha256"]) == 64
    assert (tmp_path / "cut.csv").read_text(encoding="utf-8").splitlines() == ["text,label", "t0,b", "t1,a", "t2,b",
                                                                                "t3,a"]


def _run(task: str, method: str, seed: int, accuracy: float, macro_f1: float, saliency: float) -> dict:
    return {"task": task, "layers": 3, "method": method, "seed": seed, "seconds": 1.0,
            "test": {"accuracy": accuracy, "macro_f1": macro_f1, "teacher_agreement": accuracy,
                     "saliency_agreement": saliency}, "warnings": [] if macro_f1 > 0.5 else ["student_near_chance"]}


def test_the_report_applies_the_bar_and_flags_a_collapse():
    task = {"description": "d", "teacher": {"test": {"accuracy": 0.80, "macro_f1": 0.8}},
            "splits": {name: {"rows": 10, "labels": {"a": 5, "b": 5}} for name in ("train", "dev", "test")}}
    report = {"settings": {"epochs": 1, "max_length": 8, "train_rows": 10, "overrides": {}},
              "tasks": {"good": task, "bad": task},
              "runs": [_run("good", "kd", 1, 0.78, 0.78, 0.2), _run("good", "gradient_kd", 1, 0.779, 0.77, 0.3),
                       _run("bad", "kd", 1, 0.78, 0.78, 0.2), _run("bad", "gradient_kd", 1, 0.5, 0.33, 0.3)]}
    rows = suite_report.summarise(report)
    verdicts = {v["task"]: v for v in suite_report.verdicts(report, rows)}
    assert verdicts["good"]["met"] and verdicts["good"]["checks"]["accuracy_vs_kd"]
    assert not verdicts["bad"]["met"]
    assert verdicts["bad"]["checks"]["no_collapse"] is False and verdicts["bad"]["checks"]["accuracy_vs_kd"] is False
    bad_row = next(r for r in rows if r["task"] == "bad" and r["method"] == "gradient_kd")
    assert bad_row["collapsed"] == 1 and bad_row["warned"] == 1
    # the closest method to the teacher tells whether "within 3 points" was reachable at the suite's budget
    assert round(verdicts["bad"]["best_method_teacher_gap"], 4) == 0.02
    assert round(verdicts["bad"]["teacher_gap"], 4) == 0.30
    text = suite_report.render(report)
    assert "| bad | 3 | 1 |" in text and "**no**" in text
