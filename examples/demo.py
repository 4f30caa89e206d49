"""End-to-end demo against a running service (`make run`): distil a 3-layer student from the example teacher
over the API, watch it, download it and compare it with the teacher locally.

    python examples/demo.py [--train-rows 2000] [--epochs 1] [--layers 3]

Needs `gkd example-teacher` (the teacher and var/data/movie_reviews/{train,dev}.csv) before `make run`, which
registers it as `example-teacher`. URL and key: GKD_BASE_URL / GKD_API_KEY, else http://127.0.0.1:8000 and
the key `gkd serve` keeps in HOME/local_api_key.
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import click

from gkd.client import Client, GkdError, NotFoundError
from gkd.client._http import env_setting, local_api_key
from gkd.client.cli import watch_job


def _api_key(home: Path, api_key: str | None) -> str | None:
    return api_key or env_setting("GKD_API_KEY") or local_api_key(home)


def _head_csv(source: Path, rows: int, target: Path) -> Path:
    """The first `rows` rows of a CSV (the splits are shuffled, so both labels occur)."""
    with source.open(newline="", encoding="utf-8") as handle, target.open("w", newline="", encoding="utf-8") as out:
        reader = csv.reader(handle)
        writer = csv.writer(out)
        writer.writerow(next(reader))
        for i, row in enumerate(reader):
            if i >= rows:
                break
            writer.writerow(row)
    return target


def _size(directory: Path) -> tuple[int, float]:
    """(parameters, MB on disk of the whole directory)."""
    from safetensors import safe_open

    parameters = 0
    for weights in directory.glob("*.safetensors"):
        with safe_open(str(weights), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                shape = handle.get_slice(name).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                parameters += count
    disk = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    return parameters, disk / 1e6


def _latency_ms(directory: Path, texts: list[str], max_length: int) -> float:
    """Median CPU latency of one example (batch 1, tokenization + forward pass), one thread."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(directory)).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        timings = []
        with torch.inference_mode():
            for i, text in enumerate(texts[:3] + texts):
                start = time.perf_counter()
                model(**tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt"))
                if i >= 3:  # the first three warm up
                    timings.append(time.perf_counter() - start)
        return statistics.median(timings) * 1000
    finally:
        torch.set_num_threads(threads)


def _table(rows: list[dict[str, Any]]) -> str:
    columns = ["model", "layers", "accuracy", "macro_f1", "agreement", "parameters", "MB on disk",
               "ms/example (CPU, batch 1)"]
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


@click.command()
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=Path("var"), show_default=True,
              help="The service's GKD_HOME (data, example teacher, local API key).")
@click.option("--base-url", default=None, help="Service URL [env GKD_BASE_URL, default http://127.0.0.1:8000].")
@click.option("--api-key", default=None, help="API key [env GKD_API_KEY, else HOME/local_api_key].")
@click.option("--teacher", default="example-teacher", show_default=True, help="Registered teacher name or id.")
@click.option("--train-rows", default=2000, show_default=True, help="Training rows to upload (0 = all).")
@click.option("--dev-rows", default=0, show_default=True, help="Dev rows (0 = all).")
@click.option("--epochs", default=1, show_default=True)
@click.option("--layers", default=3, show_default=True, help="Student layers.")
@click.option("--method", default="gradient_kd", show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--max-length", default=64, show_default=True)
@click.option("--latency-examples", default=50, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to put the student [default: HOME/demo/JOB_ID].")
def main(home: Path, base_url: str | None, api_key: str | None, teacher: str, train_rows: int, dev_rows: int,
         epochs: int, layers: int, method: str, batch_size: int, max_length: int, latency_examples: int,
         out: Path | None) -> None:
    """Distil, watch, download and compare: teacher vs student accuracy, size and CPU latency."""
    data = home / "data" / "movie_reviews"
    train_csv, dev_csv = data / "train.csv", data / "dev.csv"
    if not (train_csv.is_file() and dev_csv.is_file()):
        raise click.ClickException(f"{data} has no train.csv/dev.csv: run `gkd example-teacher` first")
    from gkd.models.teacher import example_teacher_dir

    teacher_dir = example_teacher_dir(home)
    key = _api_key(home, api_key)
    if not key:
        raise click.ClickException("no API key: set GKD_API_KEY or start the service with `make run`")
    try:
        with Client(base_url, key, timeout=60) as client:
            click.echo(f"service {client.base_url}")
            try:
                teacher_model = client.models.find(teacher)
            except NotFoundError as exc:
                raise click.ClickException(
                    f"no teacher named {teacher!r}: run `gkd example-teacher`, then restart `make run`") from exc
            subsets = home / "demo" / "data"  # the row-limited copies that are uploaded and evaluated on
            subsets.mkdir(parents=True, exist_ok=True)
            if train_rows:
                train_csv = _head_csv(train_csv, train_rows, subsets / f"train-{train_rows}.csv")
            if dev_rows:
                dev_csv = _head_csv(dev_csv, dev_rows, subsets / f"dev-{dev_rows}.csv")
            train = client.datasets.upload(train_csv, name="movie-reviews-train")
            dev = client.datasets.upload(dev_csv, name="movie-reviews-dev")
            click.echo(f"uploaded {train.id} ({train.rows} rows), {dev.id} ({dev.rows} rows); "
                       f"teacher {teacher_model.id} ({teacher_model.num_layers} layers)")
            job = client.jobs.create(
                teacher=teacher_model.id, training_dataset=train.id, validation_dataset=dev.id, method=method,
                student={"num_layers": layers},
                hyperparameters={"epochs": epochs, "batch_size": batch_size, "max_length": max_length},
                name=f"demo-{layers}l", metadata={"source": "examples/demo.py"},
            )
            click.echo(f"job {job.id} submitted")
            started = time.monotonic()
            final = watch_job(client, job.id)
            if final.status != "succeeded":
                raise click.ClickException(f"job {final.id} {final.status}: {final.error or ''}")
            checkpoints = {c.kind: c for c in client.checkpoints.list(job.id)}
            chosen = checkpoints.get("best") or checkpoints["final"]
            target = out or home / "demo" / job.id
            student_dir = client.checkpoints.download(job.id, chosen.id, target)
            click.echo(f"trained in {time.monotonic() - started:.0f} s; {chosen.kind} checkpoint in {student_dir}")
    except GkdError as exc:
        raise click.ClickException(str(exc)) from exc

    from gkd.evaluation.evaluate import evaluate_directory

    dev_texts = [row["text"] for row in csv.DictReader(dev_csv.open(newline="", encoding="utf-8"))]
    texts = dev_texts[:latency_examples]
    rows = []
    for label, directory, reference in (("teacher", teacher_dir, None), ("student", student_dir, teacher_dir)):
        click.echo(f"evaluating the {label} on {dev_csv} ...")
        metrics = evaluate_directory(directory, dev_csv, teacher_dir=reference, max_length=max_length)
        parameters, megabytes = _size(Path(directory))
        layers_of = json.loads((Path(directory) / "config.json").read_text())["num_hidden_layers"]
        rows.append({
            "model": label,
            "layers": layers_of,
            "accuracy": f"{metrics['accuracy']:.4f}",
            "macro_f1": f"{metrics.get('macro_f1', float('nan')):.4f}",
            "agreement": f"{metrics['teacher_agreement']:.4f}" if "teacher_agreement" in metrics else "-",
            "parameters": f"{parameters / 1e6:.1f} M",
            "MB on disk": f"{megabytes:.1f}",
            "ms/example (CPU, batch 1)": f"{_latency_ms(Path(directory), texts, max_length):.1f}",
        })
    click.echo("")
    click.echo(_table(rows))
    teacher_ms = float(rows[0]["ms/example (CPU, batch 1)"])
    student_ms = float(rows[1]["ms/example (CPU, batch 1)"])
    if student_ms > 0:
        click.echo(f"\nstudent: {teacher_ms / student_ms:.1f}x faster, "
                   f"{float(rows[1]['accuracy']) - float(rows[0]['accuracy']):+.4f} accuracy vs the teacher "
                   f"(dev, {len(dev_texts)} examples; latency median over {len(texts)})")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
