"""The `gkd` command line on tiny real models: distill, evaluate, help, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner

from gkd.cli import main
from tests.support.factories import make_tiny_teacher, sentiment_rows, write_csv


def _config(tmp_path: Path, **overrides: object) -> Path:
    teacher = make_tiny_teacher(tmp_path / "teacher", num_layers=2)
    train = write_csv(tmp_path / "train.csv", sentiment_rows(32))
    dev = write_csv(tmp_path / "dev.csv", sentiment_rows(16, seed=1))
    config = {
        "method": "gradient_kd",
        "teacher": str(teacher),
        "student": {"num_layers": 1},
        "data": {"train": str(train), "dev": str(dev)},
        "hyperparameters": {"epochs": 1, "batch_size": 8, "max_length": 16},
        "output_dir": str(tmp_path / "run"),
        "cache_dir": str(tmp_path / "cache"),
        **overrides,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_distill_then_evaluate(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["distill", str(_config(tmp_path)), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["steps"] == 4  # 32 rows / batch 8, one epoch
    assert 0.0 <= summary["student_best_dev"]["accuracy"] <= 1.0
    assert "saliency_agreement" in summary["student_best_dev"]
    best = Path(summary["best_dir"])
    assert (best / "model.safetensors").is_file() and (best / "gkd_card.json").is_file()

    evaluated = runner.invoke(main, ["evaluate", str(best), str(tmp_path / "dev.csv"), "--json",
                                     "--teacher", str(tmp_path / "teacher")])
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads(evaluated.output[evaluated.output.index("{"):])
    assert metrics["examples"] == 16
    assert {"accuracy", "macro_f1", "teacher_agreement", "saliency_agreement"} <= set(metrics)


def test_distill_override_and_bad_value_names_the_field(tmp_path: Path) -> None:
    config = _config(tmp_path)
    result = CliRunner().invoke(main, ["distill", str(config), "--set", "hyperparameters.beta=-1"])
    assert result.exit_code == 2
    assert "hyperparameters.beta" in result.output


def test_distill_with_beta_auto_reports_the_choice(tmp_path: Path) -> None:
    config = _config(tmp_path)
    overrides = ["--set", "hyperparameters.beta=auto", "--set", "hyperparameters.accuracy_guard=false",
                 "--set", "hyperparameters.gradient_start_ratio=0"]
    result = CliRunner().invoke(main, ["distill", str(config), *overrides, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{\n"):])
    choice = summary["beta_auto"]
    assert choice["chosen"] in [c["beta"] for c in choice["candidates"]] and len(choice["candidates"]) == 3
    assert "beta auto chose" in result.output  # the line the progress printer writes (stderr with --json)
    card = json.loads((Path(summary["best_dir"]) / "gkd_card.json").read_text())
    assert card["beta_auto"] == choice
    refused = CliRunner().invoke(main, ["distill", str(config), "--set", "hyperparameters.beta=fast"])
    assert refused.exit_code == 2 and "hyperparameters.beta" in refused.output and '"auto"' in refused.output


def test_student_deeper_than_teacher_is_a_clear_error(tmp_path: Path) -> None:
    config = _config(tmp_path, student={"num_layers": 5})
    result = CliRunner().invoke(main, ["distill", str(config)])
    assert result.exit_code == 2
    assert "student.num_layers" in result.output and "only 2" in result.output


def test_missing_config_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["distill", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "cannot read config file" in result.output


def test_help_through_the_entry_point_lists_library_and_service_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "gkd.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("distill", "evaluate", "example-teacher", "serve", "worker", "keys"):
        assert command in out.stdout


def test_distill_leaves_metrics_and_a_step_log_and_keeps_stdout_for_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["distill", str(_config(tmp_path)), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # stdout is the JSON alone; the bar and the rows went to stderr
    assert "step" in result.stderr or "%" in result.stderr
    run = tmp_path / "run"
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert all({"loss", "lr", "epoch", "elapsed_seconds"} <= set(s) for s in steps)
    metrics = json.loads((run / "metrics.json").read_text())
    assert [e["step"] for e in metrics["evaluations"]] == [4]
    assert metrics["student_best_dev"] == summary["student_best_dev"] and metrics["steps"] == 4
    assert summary["metrics_file"] == str(run / "metrics.json")


def test_a_fine_tune_from_a_bare_encoder_reports_no_teacher_figures(tmp_path: Path) -> None:
    from transformers import BertModel

    from tests.support.factories import tiny_bert_config, write_tokenizer

    encoder = tmp_path / "encoder"
    BertModel(tiny_bert_config(2, 32)).save_pretrained(str(encoder), safe_serialization=True)
    write_tokenizer(encoder)
    config = _config(tmp_path, method="ce", teacher=str(encoder))
    result = CliRunner().invoke(main, ["distill", str(config), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["teacher_dev"] is None  # the encoder's random head is no teacher
    assert "teacher_agreement" not in summary["student_best_dev"]
    plain = CliRunner().invoke(main, ["distill", str(config), "--set", f"output_dir={tmp_path / 'again'}"])
    assert plain.exit_code == 0, plain.output
    assert "teacher dev accuracy" not in plain.stdout and "student dev accuracy" in plain.stdout


def test_distill_on_two_devices(tmp_path: Path) -> None:
    """`--devices N` runs the data-parallel trainer (gloo processes on the CPU); rank 0 reports as usual."""
    config = _config(tmp_path, device="cpu", num_threads=1)
    result = CliRunner().invoke(main, ["distill", str(config), "--devices", "2", "--json", "--no-resume"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["devices"] == 2 and summary["steps"] == 4 and not summary["stopped"]
    assert (Path(summary["final_dir"]) / "model.safetensors").is_file()
