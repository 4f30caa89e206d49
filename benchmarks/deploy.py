"""The deployable student, side by side in one run on the movie-review test split: the PyTorch teacher, the 3-layer
`gradient_kd` student in PyTorch, and that student as ONNX fp32 and ONNX int8 (docs/onnx.md).

    python -m benchmarks.deploy                     # the example teacher; trains the student once (minutes)
    python -m benchmarks.deploy --tiny              # seconds (smoke test, tiny random models)

The student is trained with `export: ["onnx", "onnx-int8"]`, so its ONNX directories are the ones a job makes.
Speed: ms per example at batch 1 (median) and examples/s at batch 32, every model with the same threads, timed
round-robin `--repeats` times (the median kept) so that a busy moment of a shared machine hits every model alike.
Targets (issue 22): int8 >= 2x the PyTorch student's throughput, <= 0.5 points of accuracy lost against it, ONNX
fp32 logits within 1e-4 of PyTorch's. Writes `deploy.json` and `.md` under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import common

common.set_module_name("benchmarks.deploy")

import numpy as np  # noqa: E402

from gkd.config import DistillConfig  # noqa: E402
from gkd.deploy.measure import encode_for, label_names, predict, quality, timed  # noqa: E402
from gkd.deploy.predictors import directory_size, load_predictor  # noqa: E402
from gkd.export.checkpoint import read_card  # noqa: E402
from gkd.training.trainer import Trainer  # noqa: E402

TARGET_SPEEDUP = 2.0
TARGET_ACCURACY_LOSS = 0.5  # points
TARGET_LOGIT_DIFF = 1e-4


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deploy", description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default=common.DEFAULT_TEACHER)
    common.add_student_run_arguments(parser, name="deploy", train_rows=1600, epochs=3, latency_examples=200,
                                     throughput_examples=1024)
    return parser.parse_args(argv)


def train_student(args: argparse.Namespace, teacher: Path, files: dict[str, Path], work: Path) -> dict[str, Any]:
    """The 3-layer gradient_kd student with its ONNX exports (once; reused unless --retrain)."""
    run_dir = work / "run"
    if not args.retrain and all((run_dir / k / "gkd_card.json").is_file() for k in ("best", "best-onnx",
                                                                                     "best-onnx-int8")):
        return {"trained": False, "output_dir": str(run_dir)}
    rows = common.read_split(files["train"])[: args.train_rows or None]
    train = common.write_rows_csv(work / "train.csv", [(e.text, e.label) for e in rows])
    config = DistillConfig.parse({
        "method": "gradient_kd", "teacher": str(teacher), "student": {"num_layers": args.student_layers},
        "data": {"train": str(train), "dev": str(files["dev"])},
        "hyperparameters": {"epochs": args.epochs, "learning_rate": args.learning_rate,
                            "max_length": args.max_length, "batch_size": 32},
        "export": ["onnx", "onnx-int8"],
        "run": {"output_dir": str(run_dir), "cache_dir": str(work / "cache"), "num_threads": args.threads},
    })
    result = Trainer(config).train(resume=False)
    return {"trained": True, "output_dir": str(run_dir), "steps": result.steps, "dev": result.best_metrics}


def measure(args: argparse.Namespace, paths: dict[str, Path], test: list[Any]) -> dict[str, Any]:
    predictors = [load_predictor(path, name=name, threads=args.threads) for name, path in paths.items()]
    datasets = [encode_for(p, test, args.max_length) for p in predictors]
    logits = [predict(p, d) for p, d in zip(predictors, datasets, strict=True)]
    names = [label_names(p, x) for p, x in zip(predictors, logits, strict=True)]
    times = timed(predictors, datasets, repeats=args.repeats, latency_examples=args.latency_examples,
                  throughput_examples=args.throughput_examples)
    rows = []
    for i, predictor in enumerate(predictors):
        rows.append({
            "model": predictor.name, "runtime": predictor.runtime, "directory": str(predictor.directory),
            "examples": len(datasets[i]), **quality(logits[i], datasets[i], len(predictor.labels)),
            "size_bytes": directory_size(predictor.directory),
            "teacher_agreement": float(np.mean(names[i] == names[0])),
            "student_agreement": float(np.mean(names[i] == names[1])),
            **times[i],
        })
    teacher, student, fp32, int8 = rows
    for row in rows:
        row["throughput_vs_teacher"] = row["examples_per_second_batch32"] / teacher["examples_per_second_batch32"]
        row["throughput_vs_student"] = row["examples_per_second_batch32"] / student["examples_per_second_batch32"]
        row["latency_speedup_vs_teacher"] = teacher["ms_per_example_batch1"] / row["ms_per_example_batch1"]
        row["accuracy_delta_vs_teacher_points"] = (row["accuracy"] - teacher["accuracy"]) * 100
        row["accuracy_delta_vs_student_points"] = (row["accuracy"] - student["accuracy"]) * 100
    fp32_diff = float(np.max(np.abs(logits[2] - logits[1])))
    targets = {
        "int8_throughput_vs_student": {"value": int8["throughput_vs_student"], "target": f">= {TARGET_SPEEDUP}",
                                       "met": int8["throughput_vs_student"] >= TARGET_SPEEDUP},
        "int8_accuracy_loss_points": {"value": 0.0 - int8["accuracy_delta_vs_student_points"],
                                      "target": f"<= {TARGET_ACCURACY_LOSS}",
                                      "met": -int8["accuracy_delta_vs_student_points"] <= TARGET_ACCURACY_LOSS},
        "fp32_max_abs_logit_diff": {"value": fp32_diff, "target": f"<= {TARGET_LOGIT_DIFF}",
                                    "met": fp32_diff <= TARGET_LOGIT_DIFF},
    }
    return {"rows": rows, "targets": targets, "fp32_max_abs_logit_diff_test": fp32_diff,
            "int8_max_abs_logit_diff_test": float(np.max(np.abs(logits[3] - logits[1])))}


def render(report: dict[str, Any], markdown: bool) -> str:
    headers = ["model", "runtime", "accuracy", "macro-F1", "Δ acc. vs teacher", "size", "ms/ex (b=1)",
               "ex/s (b=32)", "throughput vs teacher", "vs PyTorch student", "agreement with teacher"]
    rows = [[r["model"], r["runtime"], f"{r['accuracy'] * 100:.2f} %", f"{r['macro_f1'] * 100:.2f} %",
             f"{r['accuracy_delta_vs_teacher_points']:+.2f} pts", f"{r['size_bytes'] / 1e6:.1f} MB",
             f"{r['ms_per_example_batch1']:.2f}", f"{r['examples_per_second_batch32']:.1f}",
             f"{r['throughput_vs_teacher']:.2f}x", f"{r['throughput_vs_student']:.2f}x",
             f"{r['teacher_agreement'] * 100:.1f} %"] for r in report["rows"]]
    target_rows = [[name, f"{t['value']:.3g}", t["target"], "met" if t["met"] else "not met"]
                   for name, t in report["targets"].items()]
    table = common.markdown_table if markdown else common.text_table
    s = report["settings"]
    lines = [
        "# Deployable student: PyTorch, ONNX fp32 and ONNX int8 side by side" if markdown else "deploy benchmark",
        "",
        f"Test split: {report['rows'][0]['examples']} examples, max length {s['max_length']}, {s['threads']} "
        f"thread(s) for every runtime, timing repeated {s['repeats']}x round-robin (median). Student: "
        f"{s['student_layers']} layers, gradient_kd, {s['train_rows'] or 'all'} train rows x {s['epochs']} epochs.",
        "",
        table(headers, rows),
        "",
        table(["target", "measured", "target", "result"], target_rows),
        "",
        f"int8 logits against the PyTorch student: max |difference| {report['int8_max_abs_logit_diff_test']:.3g}.",
    ]
    if markdown:
        lines += ["", common.environment_markdown(report["environment"])]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    common.set_module_name("benchmarks.deploy")  # another benchmark imported after this one may have renamed it
    common.set_threads(args.threads)
    if args.tiny:
        scratch = Path(tempfile.mkdtemp(prefix="gkd-bench-deploy-"))
        teacher = common.make_tiny_teacher(scratch / "teacher")
        files = {name: common.write_rows_csv(scratch / f"{name}.csv", common.synthetic_rows(n, seed=i))
                 for i, (name, n) in enumerate({"train": 48, "dev": 24, "test": 48}.items())}
        work = scratch / "work"
        args.train_rows, args.epochs, args.student_layers = 0, 1, 1
    else:
        teacher, files, work = Path(args.teacher), common.movie_review_split_files(args.data_dir), Path(args.work_dir)
        if not (teacher / "config.json").is_file():
            raise SystemExit(f"no teacher at {teacher}: run `gkd example-teacher` first")
    work.mkdir(parents=True, exist_ok=True)
    training = train_student(args, teacher, files, work)
    run = Path(training["output_dir"])
    paths = {"teacher (PyTorch)": teacher, "student (PyTorch)": run / "best", "student ONNX fp32": run / "best-onnx",
             "student ONNX int8": run / "best-onnx-int8"}
    report: dict[str, Any] = {
        "environment": common.environment(argv),
        "settings": {k: getattr(args, k) for k in ("teacher", "student_layers", "train_rows", "epochs",
                                                   "learning_rate", "max_length", "threads", "latency_examples",
                                                   "throughput_examples", "repeats", "tiny")},
        "training": training,
        "export_cards": {k: read_card(run / k).get("metrics") for k in ("best-onnx", "best-onnx-int8")},
        **measure(args, paths, common.read_split(files["test"])),
    }
    out = Path(args.out)
    common.write_report(out, report, render(report, markdown=True))
    print(render(report, markdown=False))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return report


if __name__ == "__main__":
    main()
