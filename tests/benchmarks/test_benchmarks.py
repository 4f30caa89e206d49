"""Smoke tests of the benchmark scripts on a tiny random teacher: they run end to end and write what they promise.

They measure nothing (a few steps on a 2-layer, 32-wide model); they only keep `benchmarks/` from rotting
and never need the example teacher.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import deploy, gradient_probe, quality, train_step, vocab_prune
from tests.support.factories import make_tiny_teacher, sentiment_rows, write_csv


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_teacher(tmp_path_factory.mktemp("teacher") / "tiny", num_layers=2, hidden=32)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reviews")
    for seed, (name, count) in enumerate({"train": 24, "dev": 12, "test": 12}.items()):
        write_csv(root / f"{name}.csv", sentiment_rows(count, seed=seed))
    return root


def step_args(teacher_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--teacher", str(teacher_dir), "--synthetic-data", "--student-layers", "2", "--batch-size", "4",
            "--length", "16", "--steps", "1", "--warmup", "1", "--threads", "1", "--out", str(out), *extra]


def test_train_step_writes_every_variant_epoch_phases_and_targets(teacher_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "train_step.json"
    report = train_step.main(step_args(teacher_dir, out, "--epoch-batches", "2", "--epoch-repeats", "1", "--no-rss"))

    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["benchmark"] == "train_step" and saved == json.loads(json.dumps(report))
    assert {"environment", "settings", "shapes", "epoch", "phases", "targets"} <= set(saved)
    assert {"command", "date", "torch", "cpu_count", "torch_threads"} <= set(saved["environment"])
    assert set(saved["shapes"]) == {"padded", "bucketed"}
    variants = {"ce", "kd", "kd+cache", "pkd", "pkd+cache", "gradient_kd", "gradient_kd+cache",
                "gradient_kd_cls", "gradient_kd_cls+cache"}
    for shape in saved["shapes"].values():
        assert {row["variant"] for row in shape["results"]} == variants
        for row in shape["results"]:
            assert len(row["times_ms"]) == 1 and row["median_ms"] > 0 and row["ratio_to_kd_uncached"] > 0
            # one measured step after one warm-up: the capped variants measured the cap's scale on neither
            assert row["ms_per_step"] == row["median_ms"] and row["cap_measuring_steps"] == 0
        assert shape["cache_build_s"] > 0
    assert saved["shapes"]["padded"]["stats"]["mean_width"] == 16
    epoch = saved["epoch"]
    assert epoch["batches"] == 2 and len(epoch["cached_s"]) == len(epoch["uncached_s"]) == 1 and epoch["speedup"] > 0
    assert {"gradient_kd+cache", "gradient_kd", "kd"} <= set(saved["phases"])
    assert "input_gradient_create_graph" in saved["phases"]["gradient_kd+cache"]
    assert {t["name"].split(" (")[0] for t in saved["targets"]} >= {"gradient_kd cached <= 1.5x uncached kd"}
    assert all(isinstance(t["pass"], bool) for t in saved["targets"])
    markdown = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "python -m benchmarks.train_step" in markdown and "| gradient_kd | yes |" in markdown


def test_train_step_times_a_random_teacher_of_another_size(teacher_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bigger.json"
    report = train_step.main(step_args(teacher_dir, out, "--random-teacher", "3x64", "--methods", "gradient_kd",
                                       "--shapes", "bucketed", "--epoch-batches", "0", "--no-rss", "--no-phases"))
    settings = report["settings"]
    assert (settings["teacher_layers"], settings["teacher_hidden"]) == (3, 64)  # not the 2 x 32 source
    assert settings["teacher"] == f"random 3x64 (tokenizer and labels of {teacher_dir})"
    assert {row["variant"] for row in report["shapes"]["bucketed"]["results"]} == {"gradient_kd",
                                                                                "gradient_kd+cache"}
    with pytest.raises(SystemExit):
        train_step.main(step_args(teacher_dir, out, "--random-teacher", "12-768"))


def test_step_cost_weights_the_cap_measuring_steps_by_how_often_they_come() -> None:
    times = [100.0, 10.0, 12.0, 11.0, 104.0, 9.0]
    measured = [True, False, False, False, True, False]
    # medians: 102 for measuring steps, 10.5 for the rest; one step in four measures
    assert train_step.step_cost(times, measured, every=4) == pytest.approx((102.0 + 3 * 10.5) / 4)
    assert train_step.step_cost(times, [False] * 6, every=4) == pytest.approx(11.5)  # plain median
    assert train_step.step_cost(times, measured, every=1) == pytest.approx(11.5)


@pytest.mark.slow  # two subprocesses, each importing torch and transformers
def test_train_step_measures_peak_rss_in_subprocesses(teacher_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "rss.json"
    report = train_step.main(step_args(teacher_dir, out, "--methods", "gradient_kd", "--shapes", "packed",
                                       "--epoch-batches", "0", "--no-phases", "--rss-steps", "1"))

    memory = {(m["method"], m["cached"]): m for m in report["memory"]}
    assert set(memory) == {("gradient_kd", False), ("gradient_kd", True)}
    for row in memory.values():
        assert "error" not in row, row.get("error")
        assert row["peak_rss_mb"] >= row["setup_peak_rss_mb"] > 0
    assert report["shapes"]["packed"]["stats"]["real_token_fraction"] == 1.0
    assert "epoch" not in report


def quality_args(teacher_dir: Path, data_dir: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["--teacher", str(teacher_dir), "--data-dir", str(data_dir), "--epochs", "1", "--max-length", "16",
            "--batch-size", "8", "--learning-rate", "1e-3", "--methods", "ce,gradient_kd", "--layers", "1",
            "--seeds", "1", "--threads", "1", "--beta", "1", "--gamma", "1", "--cache-dir", str(tmp_path / "cache"),
            "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "quality.json"), *extra]


def test_quality_runs_methods_and_sweep_and_resumes(teacher_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    args = quality_args(teacher_dir, data_dir, tmp_path, "--sweep", "--sweep-values", "10", "--sweep-layers", "1")
    report = quality.main(args)

    out = tmp_path / "quality.json"
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert {"environment", "settings", "runs", "summary", "sweep_summary", "teacher_reference"} <= set(saved)
    assert sorted(run["key"] for run in saved["runs"]) == [
        "main|L1|ce|seed42|beta1|gamma1", "main|L1|gradient_kd|seed42|beta1|gamma1",
        "sweep|L1|gradient_kd|seed42|beta10|gamma1",
    ]
    for run in saved["runs"]:
        assert {"accuracy", "teacher_agreement", "saliency_agreement", "saliency_top3_overlap"} <= set(run["test"])
    rows = {(row["layers"], row["method"]): row for row in saved["summary"]}
    assert set(rows) == {(1, "ce"), (1, "gradient_kd")}
    assert rows[(1, "gradient_kd")]["accuracy"]["values"] == [saved["runs"][1]["test"]["accuracy"]]
    assert "saliency cos" in out.with_suffix(".md").read_text(encoding="utf-8")
    assert saved["teacher_reference"]["test"]["saliency_agreement"] == pytest.approx(1.0, abs=1e-4)
    assert not (tmp_path / "work" / "main_L1_ce_seed42_beta1_gamma1").exists()

    again = quality.main(args)  # resumes: every run is already there
    assert [r["key"] for r in again["runs"]] == [r["key"] for r in report["runs"]]
    with pytest.raises(SystemExit, match="other settings"):
        quality.main(quality_args(teacher_dir, data_dir, tmp_path, "--epochs", "2"))


def test_quality_merges_runs_made_in_separate_processes(teacher_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    def one(seed_base: str, name: str, *extra: str) -> Path:
        args = quality_args(teacher_dir, data_dir, tmp_path, "--methods", "ce", "--seed-base", seed_base,
                            "--no-plot", *extra)
        args[args.index("--out") + 1] = str(tmp_path / name)
        quality.main(args)
        return tmp_path / name

    a, b = one("42", "a.json"), one("43", "b.json")
    merged = quality.main(["--merge", str(a), str(b), str(a), "--out", str(tmp_path / "m.json"), "--no-plot"])
    assert sorted(r["key"] for r in merged["runs"]) == ["main|L1|ce|seed42|beta1|gamma1",
                                                       "main|L1|ce|seed43|beta1|gamma1"]
    assert len(merged["summary"][0]["accuracy"]["values"]) == 2
    assert merged["settings"]["seeds"] == [42, 43]
    assert "methods x student depth" in (tmp_path / "m.md").read_text(encoding="utf-8")
    c = one("44", "c.json", "--epochs", "2")
    with pytest.raises(SystemExit, match="other settings"):
        quality.main(["--merge", str(a), str(c), "--out", str(tmp_path / "m2.json"), "--no-plot"])


def test_quality_tiny_mode_needs_no_files(tmp_path: Path) -> None:
    report = quality.main(["--tiny", "--train-rows", "16", "--eval-rows", "8", "--epochs", "1", "--max-length", "16",
                           "--batch-size", "8", "--methods", "kd", "--layers", "1", "--seeds", "1", "--no-plot",
                           "--threads", "1", "--cache-dir", str(tmp_path / "cache"), "--work-dir",
                           str(tmp_path / "work"), "--out", str(tmp_path / "q.json")])
    assert [row["method"] for row in report["summary"]] == ["kd"]
    assert report["settings"]["teacher"] == "tiny"


def test_gradient_probe_checks_the_double_backprop_gradient_and_writes_its_tables(tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    report = gradient_probe.main(["--tiny", "--student-layers", "2", "--kd-steps", "2", "--adam-steps", "3",
                                  "--out", str(out)])

    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(report))
    # autograd's parameter gradient of L_grad (double backprop) matches central differences in float64
    finest = saved["finite_difference"][-1]
    assert finest["autograd"] > 0
    assert finest["finite_difference"] == pytest.approx(finest["autograd"], rel=1e-4)
    for part in ("fresh", "after_kd"):
        assert saved[part]["mean_input_gradient_norm"] > 0
        assert all(len(history) == 3 for history in saved[part]["adam"].values())
    assert "python -m benchmarks.gradient_probe" in out.with_suffix(".md").read_text(encoding="utf-8")


def test_deploy_puts_teacher_student_and_both_onnx_students_side_by_side(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "deploy.json"
    report = deploy.main(["--tiny", "--repeats", "2", "--latency-examples", "3", "--throughput-examples", "32",
                          "--threads", "1", "--out", str(out)])
    runtimes = [row["runtime"] for row in report["rows"]]
    assert runtimes == ["pytorch", "pytorch", "onnx-fp32", "onnx-int8"]
    for row in report["rows"]:
        assert len(row["ms_per_example_batch1_all"]) == 2 and row["examples_per_second_batch32"] > 0
        assert row["size_bytes"] > 0 and 0.0 <= row["accuracy"] <= 1.0
    assert report["rows"][0]["throughput_vs_teacher"] == 1.0
    assert set(report["targets"]) == {"int8_throughput_vs_student", "int8_accuracy_loss_points",
                                      "fp32_max_abs_logit_diff"}
    assert report["targets"]["fp32_max_abs_logit_diff"]["met"]  # fp32 ONNX reproduces the PyTorch student
    # the ONNX directories are the ones the run's `export` made, each with its measured dev metrics
    assert {"accuracy", "student_agreement", "ms_per_example_batch1"} <= set(report["export_cards"]["best-onnx-int8"])
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["rows"][3]["runtime"] == "onnx-int8"
    assert "python -m benchmarks.deploy" in out.with_suffix(".md").read_text(encoding="utf-8")


def test_vocab_prune_puts_the_same_student_with_and_without_pruning_side_by_side(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "vocab_prune.json"
    report = vocab_prune.main(["--tiny", "--out", str(out)])
    rows = {row["model"]: row for row in report["rows"]}
    assert list(rows) == ["full (PyTorch)", "pruned (PyTorch)", "full (ONNX fp32)", "pruned (ONNX fp32)"]
    for pruned, full in (("pruned (PyTorch)", "full (PyTorch)"), ("pruned (ONNX fp32)", "full (ONNX fp32)")):
        assert rows[pruned]["vocabulary"] < rows[full]["vocabulary"]
        assert rows[pruned]["size_bytes"] < rows[full]["size_bytes"] and rows[pruned]["size_vs_full"] < 1.0
        assert 0.0 <= rows[pruned]["agreement_with_full"] <= 1.0
    assert rows["full (PyTorch)"]["agreement_with_full"] == 1.0
    assert report["pruned_card"]["vocabulary"]["kept_tokens"] == rows["pruned (PyTorch)"]["vocabulary"]
    assert "python -m benchmarks.vocab_prune" in out.with_suffix(".md").read_text(encoding="utf-8")
