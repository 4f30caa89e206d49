"""The task suite: every method on several tasks, each with its own teacher, with the defaults a user gets.

    python -m benchmarks.suite                      # the whole suite (hours on 2 cores; resumable)
    python -m benchmarks.suite --tasks nyt-2 --layers 3 --methods kd,gradient_kd --seeds 1   # a slice
    python -m benchmarks.suite --variant lr1e-4 --set hyperparameters.learning_rate=1e-4     # an experiment

For each task (benchmarks/suite/tasks.py) it writes seeded train/dev/test files under `--home`, fine-tunes a
teacher from the packaged MiniLM with `gkd teacher finetune`'s function (once), then trains students with
`gkd.Trainer` and the library's default hyperparameters, bounded only where CPU time forces it: the same
`--train-rows`, `--epochs` and `--max-length` for every method. Each run reports the test metrics of its
best-on-dev checkpoint. Runs go to the JSON as they finish, so a killed suite continues where it stopped.
Writes `benchmarks/results/suite.{json,md}` (or `--out`; a `--variant` writes under `--home`/experiments).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.suite import report as suite_report
from benchmarks.suite.runs import execute
from benchmarks.suite.tasks import TASKS

common.set_module_name("benchmarks.suite")

METHODS = ("ce", "kd", "gradient_kd")
SHALLOW_TASKS = ("movie-2", "nyt-3")  # the 2-layer students, one binary and one 3-class task
CLS_TASK = "movie-2"  # gradient_kd_cls runs here (3 layers)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    parser.add_argument("--layers", default=None, help="student depths for every task (default: 3 everywhere, "
                        f"and 2 on {', '.join(SHALLOW_TASKS)})")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--cls-task", default=CLS_TASK, help="also run gradient_kd_cls (3 layers) on this task; "
                        "'none' skips it")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed-base", type=int, default=1)
    parser.add_argument("--train-rows", type=int, default=3000, help="training rows per task (teacher and students)")
    parser.add_argument("--student-rows", type=int, default=None, help="train students on only the first N of the "
                        "training rows (a short-job budget; the teacher keeps --train-rows)")
    parser.add_argument("--epochs", type=int, default=2, help="student epochs (the CPU bound; same for every method)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every student, e.g. hyperparameters.learning_rate=1e-4")
    parser.add_argument("--patch", dest="patches", action="append", default=[], metavar="MODULE.NAME=VALUE",
                        help="an experiment on a library constant, set in every run's process, e.g. "
                        "gkd.training.accuracy_guard.OPEN_AT=0.3")
    parser.add_argument("--variant", default=None, help="name of an experiment: results go to "
                        "HOME/experiments/VARIANT.json unless --out is given")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one torch thread each)")
    parser.add_argument("--home", default="var/suite", help="task data, teachers, caches and run directories")
    parser.add_argument("--out", default=None)
    parser.add_argument("--render", action="store_true", help="only render the Markdown of --out")
    args = parser.parse_args(argv)
    args.task_list = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(args.task_list) - set(TASKS))
    if unknown:
        parser.error(f"unknown tasks {unknown}; choose from {', '.join(TASKS)}")
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.seed_list = [args.seed_base + i for i in range(args.seeds)]
    if args.out is None:
        args.out = (str(Path(args.home) / "experiments" / f"{args.variant}.json") if args.variant
                    else str(common.RESULTS_DIR / "suite.json"))
    return args


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    import yaml

    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def plan_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Seed-major order, so a complete table of every task exists as early as possible."""
    runs = []
    for seed in args.seed_list:
        for task in args.task_list:
            depths = ([int(x) for x in args.layers.split(",")] if args.layers
                      else [3] + ([2] if task in SHALLOW_TASKS else []))
            for layers in depths:
                methods = list(args.method_list)
                if task == args.cls_task and layers == 3 and "gradient_kd_cls" not in methods:
                    methods.append("gradient_kd_cls")
                for method in methods:
                    runs.append({"task": task, "layers": layers, "method": method, "seed": seed,
                                 "key": f"{task}|L{layers}|{method}|seed{seed}"})
    return runs


# ---------------------------------------------------------------- preparation (parent process)
def prepare_task(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """The task's split files and its teacher (made once, reused), with the teacher's test figures."""
    from benchmarks.suite.tasks import write_split_files
    from gkd.evaluation.evaluate import evaluate_directory
    from gkd.models.teacher import base_model_dir
    from gkd.training.finetune import finetune_teacher

    home = Path(args.home)
    data_dir = home / "data" / f"{name}-{args.train_rows}"
    split_record = write_split_files(TASKS[name], data_dir, seed=42, train_rows=args.train_rows)
    teacher_dir = home / "teachers" / f"{name}-{args.train_rows}"
    card_file = teacher_dir / "gkd_card.json"
    if not card_file.is_file():
        print(f"fine-tuning the {name} teacher ...", flush=True)
        started = time.perf_counter()
        finetune_teacher(base_model_dir(), data_dir / "train.csv", teacher_dir, dev=data_dir / "dev.csv",
                         test=data_dir / "test.csv", num_threads=max(1, args.jobs),
                         card={"name": f"suite-{name}", "task": TASKS[name].description})
        print(f"  {name} teacher in {time.perf_counter() - started:.0f} s", flush=True)
    if args.student_rows:
        split_record["student_train"] = head_rows(data_dir / "train.csv", args.student_rows,
                                                  data_dir / f"train-first-{args.student_rows}.csv")
    card = json.loads(card_file.read_text(encoding="utf-8"))
    test = evaluate_directory(teacher_dir, data_dir / "test.csv", max_length=args.max_length)
    return {"task": name, "description": TASKS[name].description, "splits": split_record,
            "teacher": {"dir": str(teacher_dir), "dev_accuracy": card.get("dev_accuracy"),
                        "test": {k: v for k, v in test.items() if k in ("accuracy", "macro_f1")},
                        "epochs": card.get("epochs"), "learning_rate": card.get("learning_rate")}}


def head_rows(source: Path, rows: int, target: Path) -> dict[str, Any]:
    """The first `rows` data rows of a CSV split (already shuffled and stratified), with their count and sha256."""
    import csv
    import hashlib

    with source.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        kept = [next(reader), *[row for _, row in zip(range(rows), reader, strict=False)]]
    with target.open("w", newline="", encoding="utf-8") as out:
        csv.writer(out).writerows(kept)
    return {"file": str(target), "rows": len(kept) - 1, "sha256": hashlib.sha256(target.read_bytes()).hexdigest()}


# ---------------------------------------------------------------- main
def load_report(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    if not out.is_file():
        return {"benchmark": "suite", "settings": settings, "tasks": {}, "runs": []}
    report = json.loads(out.read_text(encoding="utf-8"))
    keys = ("train_rows", "student_rows", "epochs", "max_length", "overrides", "patches")
    changed = [k for k in keys if report["settings"].get(k) != settings.get(k)]
    if changed:
        raise SystemExit(f"{out} holds runs made with other settings ({', '.join(changed)}): use another --out")
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    common.set_module_name("benchmarks.suite")
    args = parse_args(argv)
    out = Path(args.out)
    settings = {"train_rows": args.train_rows, "student_rows": args.student_rows,
                "epochs": args.epochs, "max_length": args.max_length,
                "overrides": parse_overrides(args.overrides),
                "patches": parse_overrides(args.patches), "home": args.home, "variant": args.variant}
    report = load_report(out, settings)
    if args.render:
        suite_report.write(report, out)
        print(suite_report.render(report, markdown=False))
        return report
    report["environment"] = common.environment(argv)
    common.set_threads(max(1, args.jobs))
    for name in args.task_list:
        report["tasks"][name] = prepare_task(args, name)
    done = {run["key"] for run in report["runs"]}
    todo = [run for run in plan_runs(args) if run["key"] not in done]
    print(f"{len(done)} runs already in {out}; {len(todo)} to do with {args.jobs} in parallel", flush=True)
    started = time.perf_counter()
    finished = 0
    os.environ["OMP_NUM_THREADS"] = "1"
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=get_context("spawn")) as pool:
        pending: dict[Future[dict[str, Any]], dict[str, Any]] = {}
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < max(1, args.jobs):
                run = queue.pop(0)
                pending[pool.submit(execute, run, report["tasks"][run["task"]], settings)] = run
            completed, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in completed:
                run = pending.pop(future)
                record = future.result()
                report["runs"].append(record)
                suite_report.write(report, out)
                finished += 1
                elapsed = time.perf_counter() - started
                eta = elapsed / finished * (len(todo) - finished)
                test = record["test"]
                print(f"[{finished}/{len(todo)}] {run['key']}: acc {test.get('accuracy', float('nan')):.4f} "
                      f"f1 {test.get('macro_f1', float('nan')):.4f} "
                      f"saliency {test.get('saliency_agreement', float('nan')):.3f} in {record['seconds']:.0f} s "
                      f"(eta {eta / 60:.0f} min)", flush=True)
    suite_report.write(report, out)
    print()
    print(suite_report.render(report, markdown=False))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return report


if __name__ == "__main__":
    main()
