"""BENCHMARKS.md item 2: accuracy and saliency agreement of every method on the movie-review benchmark.

    python -m benchmarks.quality                                   # 2- and 3-layer students, 5 methods, 3 seeds
    python -m benchmarks.quality --train-rows 2000 --epochs 2      # bounded
    python -m benchmarks.quality --sweep --methods gradient_kd,gradient_kd_cls   # + beta/gamma sweep

Every run is a real `gkd.training.trainer.Trainer` run (example teacher, teacher cache shared under `--cache-dir`)
and reports the test metrics of its best-on-dev checkpoint (`TrainResult.test_metrics`): accuracy,
macro-F1, teacher agreement, saliency agreement (mean cosine of per-token input gradients over real
tokens) and top-3 salient-token overlap. Runs are appended to the JSON as they finish, so a killed
benchmark continues where it stopped when started again with the same settings (`--fresh` starts over).
Writes `quality.json`, `quality.md` (tables) and `quality.png` (accuracy and saliency agreement against
student depth per method).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import common

common.set_module_name("benchmarks.quality")

from gkd.config import DistillConfig, Hyperparameters  # noqa: E402
from gkd.data.batching import encode_examples  # noqa: E402
from gkd.evaluation.evaluate import evaluate_model  # noqa: E402
from gkd.method.objective import teacher_targets  # noqa: E402
from gkd.method.properties import METHODS  # noqa: E402
from gkd.models.teacher import Teacher, load_teacher  # noqa: E402
from gkd.training.callbacks import StepMetrics, TrainerCallback, TrainingProgress  # noqa: E402
from gkd.training.trainer import Trainer, resolve_device  # noqa: E402

DEFAULTS = Hyperparameters()  # the library's defaults are the benchmark's: written once, in gkd/config.py

METRICS = ("accuracy", "macro_f1", "teacher_agreement", "saliency_agreement", "saliency_top3_overlap")
SETTING_KEYS = ("teacher", "data", "train_rows", "eval_rows", "epochs", "max_length", "batch_size",
                "learning_rate", "beta", "gamma", "gradient_term_cap", "gradient_warmup_ratio",
                "gradient_term_cap_per_tensor", "gradient_term_cap_every", "gradient_start_ratio", "student_dropout",
                "student_embeddings", "student_init_model")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default=common.DEFAULT_TEACHER)
    parser.add_argument("--tiny", action="store_true", help="tiny random teacher and synthetic data (smoke runs)")
    parser.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR, help="holds train.csv, dev.csv, test.csv")
    parser.add_argument("--train-rows", type=int, default=None, help="first N training rows (default: all)")
    parser.add_argument("--eval-rows", type=int, default=None, help="first N dev and test rows (default: all)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=DEFAULTS.learning_rate)
    parser.add_argument("--beta", type=float, default=DEFAULTS.beta,
                        help="beta of the main runs (pkd, gradient_kd[_cls])")
    parser.add_argument("--gamma", type=float, default=DEFAULTS.gamma, help="gamma of the main runs (gradient_kd_cls)")
    parser.add_argument("--gradient-term-cap", type=common.optional_float, default=DEFAULTS.gradient_term_cap,
                        help="hyperparameters.gradient_term_cap ('none': the paper's uncapped sum)")
    parser.add_argument("--gradient-warmup-ratio", type=float, default=DEFAULTS.gradient_warmup_ratio)
    parser.add_argument("--gradient-start-ratio", type=float, default=DEFAULTS.gradient_start_ratio)
    parser.add_argument("--gradient-term-cap-every", type=int, default=DEFAULTS.gradient_term_cap_every,
                        help="hyperparameters.gradient_term_cap_every (1: measure the cap's scale every step)")
    parser.add_argument("--cap-per-tensor", action=argparse.BooleanOptionalAction,
                        default=DEFAULTS.gradient_term_cap_per_tensor,
                        help="hyperparameters.gradient_term_cap_per_tensor")
    parser.add_argument("--student-dropout", type=float, default=None,
                        help="student.dropout (default: the library's, 0)")
    parser.add_argument("--student-embeddings", choices=("frozen", "trainable"), default=None,
                        help="student.embeddings (default: the library's, trainable)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--student-init-model", default=None,
                        help="start every student from this encoder directory (student.init.model, bottom layers) "
                        "instead of cutting it from the teacher; e.g. the packaged MiniLM")
    parser.add_argument("--layers", default="2,3", help="student depths")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per (depth, method): seed-base, seed-base+1, ...")
    parser.add_argument("--seed-base", type=int, default=42)
    parser.add_argument("--sweep-gamma", action="store_true", help="with --sweep, also sweep gamma (gradient_kd_cls)")
    parser.add_argument("--sweep", action="store_true",
                        help="also sweep beta (gradient_kd) and gamma (gradient_kd_cls) on one seed")
    parser.add_argument("--sweep-values", default="0.1,1,10,100")
    parser.add_argument("--sweep-layers", type=int, default=3)
    parser.add_argument("--no-main", action="store_true", help="only the sweep")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache-dir", default="var/teacher_cache")
    parser.add_argument("--work-dir", default="var/bench/quality", help="run directories (deleted after each run)")
    parser.add_argument("--out", default=str(common.RESULTS_DIR / "quality.json"))
    parser.add_argument("--fresh", action="store_true", help="discard earlier results in --out")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                        help="only merge the runs of these result files (same settings; e.g. one process per "
                        "core, each with its own --out) into --out, and render it; nothing is trained")
    args = parser.parse_args(argv)
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = sorted(set(args.method_list) - set(METHODS))
    if bad:
        parser.error(f"unknown methods {bad}; choose from {', '.join(METHODS)}")
    args.layer_list = [int(x) for x in args.layers.split(",") if x.strip()]
    args.seed_list = [args.seed_base + i for i in range(args.seeds)]
    args.sweep_list = [float(x) for x in args.sweep_values.split(",") if x.strip()]
    return args


# ---------------------------------------------------------------- plan
def plan_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every run to do, in an order that gives a complete (depth, method) table as early as possible."""
    runs: list[dict[str, Any]] = []
    if not args.no_main:
        for seed in args.seed_list:
            for layers in args.layer_list:
                for method in args.method_list:
                    runs.append({"group": "main", "layers": layers, "method": method, "seed": seed,
                                 "beta": args.beta, "gamma": args.gamma})
    if args.sweep:
        seed = args.seed_list[0] if args.seed_list else args.seed_base
        for value in args.sweep_list:
            if "gradient_kd" in args.method_list:
                runs.append({"group": "sweep", "layers": args.sweep_layers, "method": "gradient_kd", "seed": seed,
                             "beta": value, "gamma": args.gamma, "swept": "beta"})
            if args.sweep_gamma and "gradient_kd_cls" in args.method_list:
                runs.append({"group": "sweep", "layers": args.sweep_layers, "method": "gradient_kd_cls",
                             "seed": seed, "beta": args.beta, "gamma": value, "swept": "gamma"})
    for run in runs:
        run["key"] = run_key(run)
    return runs


def run_key(run: dict[str, Any]) -> str:
    return (f"{run['group']}|L{run['layers']}|{run['method']}|seed{run['seed']}|beta{run['beta']:g}"
            f"|gamma{run['gamma']:g}")


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {"teacher": "tiny" if args.tiny else str(args.teacher), "data": str(args.data_dir),
            "train_rows": args.train_rows, "eval_rows": args.eval_rows, "epochs": args.epochs,
            "max_length": args.max_length, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
            "beta": args.beta, "gamma": args.gamma, "layers": args.layer_list, "methods": args.method_list,
            "seeds": args.seed_list, "sweep_values": args.sweep_list if args.sweep else None,
            "cache_dir": str(args.cache_dir), "gradient_warmup_ratio": args.gradient_warmup_ratio,
            "gradient_term_cap": args.gradient_term_cap, "gradient_term_cap_per_tensor": args.cap_per_tensor,
            "gradient_term_cap_every": args.gradient_term_cap_every, "gradient_start_ratio": args.gradient_start_ratio,
            # the students' effective settings (the library's defaults are the same for every method)
            "student_dropout": args.student_dropout if args.student_dropout is not None else 0.0,
            "student_embeddings": args.student_embeddings or "trainable",
            "student_init_model": args.student_init_model}


def load_previous(out: Path, settings: dict[str, Any], fresh: bool) -> dict[str, Any]:
    if fresh or not out.is_file():
        return {"benchmark": "quality", "settings": settings, "runs": []}
    previous = json.loads(out.read_text(encoding="utf-8"))
    old = previous.get("settings", {})
    changed = [k for k in SETTING_KEYS if old.get(k) != settings.get(k)]
    if changed:
        raise SystemExit(
            f"{out} holds runs made with other settings ({', '.join(changed)}); pass --fresh to discard them "
            "or --out to write elsewhere"
        )
    previous["settings"] = settings  # methods/layers/seeds may grow between invocations
    return previous


# ---------------------------------------------------------------- running
def split_examples(args: argparse.Namespace, files: dict[str, Path]) -> dict[str, list[Any]]:
    splits = {name: common.read_split(path) for name, path in files.items()}
    if args.train_rows:
        splits["train"] = splits["train"][: args.train_rows]
    if args.eval_rows:
        splits["dev"] = splits["dev"][: args.eval_rows]
        splits["test"] = splits["test"][: args.eval_rows]
    return splits


def make_config(args: argparse.Namespace, run: dict[str, Any], files: dict[str, Path], teacher_dir: Path,
                output_dir: Path) -> DistillConfig:
    return DistillConfig.parse({
        "method": run["method"],
        "teacher": str(teacher_dir),
        "student": {"num_layers": run["layers"], "dropout": args.student_dropout,
                    "embeddings": args.student_embeddings,
                    "init": {"model": args.student_init_model, "layers": "bottom"} if args.student_init_model
                    else "bottom"},
        "data": {name: str(path) for name, path in files.items()},
        "hyperparameters": {"epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
                            "max_length": args.max_length, "seed": run["seed"], "beta": run["beta"],
                            "gamma": run["gamma"], "gradient_term_cap": args.gradient_term_cap,
                            "gradient_warmup_ratio": args.gradient_warmup_ratio,
                            "gradient_term_cap_per_tensor": args.cap_per_tensor,
                            "gradient_term_cap_every": args.gradient_term_cap_every,
                            "gradient_start_ratio": args.gradient_start_ratio},
        "output_dir": str(output_dir),
        "device": args.device,
        "cache": "auto",
        "cache_dir": str(args.cache_dir),
        "num_threads": args.threads,
    })


class TermsPerEpoch(TrainerCallback):
    """Mean of every logged loss term per epoch (e.g. `grad` and `grad_cap_scale`), kept in the run's JSON.

    Each term is averaged over the steps that logged it (`grad_cap_scale` is absent while the ramp is at 0)."""

    def __init__(self) -> None:
        self.sums: list[dict[str, float]] = []
        self.counts: list[dict[str, int]] = []

    def on_step(self, progress: TrainingProgress, metrics: StepMetrics) -> None:
        epoch = progress.epoch
        while len(self.sums) <= epoch:
            self.sums.append({})
            self.counts.append({})
        for name, value in {"loss": metrics.loss, **metrics.terms}.items():
            self.sums[epoch][name] = self.sums[epoch].get(name, 0.0) + value
            self.counts[epoch][name] = self.counts[epoch].get(name, 0) + 1

    def means(self) -> list[dict[str, float]]:
        return [{name: value / counts[name] for name, value in sums.items()}
                for sums, counts in zip(self.sums, self.counts, strict=True) if counts]


def execute(args: argparse.Namespace, run: dict[str, Any], files: dict[str, Path], splits: dict[str, list[Any]],
            teacher: Teacher, teacher_dir: Path) -> dict[str, Any]:
    output_dir = Path(args.work_dir) / run["key"].replace("|", "_")
    shutil.rmtree(output_dir, ignore_errors=True)
    config = make_config(args, run, files, teacher_dir, output_dir)
    terms = TermsPerEpoch()
    start = time.perf_counter()
    try:
        result = Trainer(config, [terms], examples=splits, teacher=teacher).train(resume=False)
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
    return {
        **run,
        "seconds": time.perf_counter() - start,
        "steps": result.steps,
        "test": result.test_metrics or {},
        "best_dev": result.best_metrics,
        "teacher_dev": result.teacher_metrics,
        "terms_per_epoch": terms.means(),
        "dev_history": [{"step": h["step"], "accuracy": h["metrics"].get("accuracy")} for h in result.history],
    }


def teacher_reference(args: argparse.Namespace, files: dict[str, Path], splits: dict[str, list[Any]],
                      teacher: Teacher, teacher_dir: Path) -> dict[str, Any]:
    """The teacher's own test metrics (evaluated as if it were the student: saliency agreement is 1)."""
    run = {"method": "kd", "layers": 1, "seed": args.seed_base, "beta": args.beta, "gamma": args.gamma}
    config = make_config(args, run, files, teacher_dir, Path(args.work_dir) / "teacher")
    labels = teacher.labels
    test = encode_examples(teacher.tokenizer, splits["test"], labels, config.hyperparameters.max_length)
    metrics = evaluate_model(teacher.model, test, labels, device=resolve_device(config.run.device),
                             pad_id=int(teacher.tokenizer.pad_token_id or 0),
                             targets=lambda batch: teacher_targets(teacher.model, batch))
    teacher.model.eval()
    return {"layers": int(teacher.model.config.num_hidden_layers), "test": metrics}


# ---------------------------------------------------------------- reporting
def aggregate(runs: list[dict[str, Any]], group: str, by: Sequence[str]) -> list[dict[str, Any]]:
    buckets: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for run in runs:
        if run.get("group") == group:
            buckets.setdefault(tuple(run[k] for k in by), []).append(run)
    rows = []
    for key, members in sorted(buckets.items(), key=lambda kv: tuple(str(v) if isinstance(v, str) else v
                                                                        for v in kv[0])):
        row: dict[str, Any] = dict(zip(by, key, strict=True))
        row["n"] = len(members)
        row["seeds"] = sorted(m["seed"] for m in members)
        for metric in METRICS:
            values = [m["test"][metric] for m in members if metric in m.get("test", {})]
            mean, std = common.mean_std(values)
            row[metric] = {"mean": mean, "std": std, "values": values}
        row["seconds_mean"] = common.mean_std([m["seconds"] for m in members])[0]
        rows.append(row)
    return rows


def _pm(stat: dict[str, Any], scale: float = 100.0, digits: int = 1) -> str:
    if not stat["values"]:
        return "-"
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def method_order(method: str) -> int:
    return METHODS.index(method) if method in METHODS else len(METHODS)


def main_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    headers = ["layers", "method", "n", "test acc %", "macro-F1 %", "teacher agr. %", "saliency cos",
               "top-3 overlap %", "s/run"]
    body = []
    for row in sorted(rows, key=lambda r: (r["layers"], method_order(r["method"]))):
        body.append([row["layers"], row["method"], row["n"], _pm(row["accuracy"]), _pm(row["macro_f1"]),
                     _pm(row["teacher_agreement"]), _pm(row["saliency_agreement"], 1.0, 3),
                     _pm(row["saliency_top3_overlap"]), f"{row['seconds_mean']:.0f}"])
    return headers, body


def sweep_table(runs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    headers = ["method", "layers", "seed", "beta", "gamma", "test acc %", "teacher agr. %", "saliency cos",
               "top-3 overlap %"]
    body = []
    for run in sorted((r for r in runs if r.get("group") == "sweep"),
                      key=lambda r: (method_order(r["method"]), r["beta"], r["gamma"])):
        test = run["test"]

        def pct(name: str, test: dict[str, float] = test) -> str:
            return f"{test[name] * 100:.1f}" if name in test else "-"

        body.append([run["method"], run["layers"], run["seed"], f"{run['beta']:g}", f"{run['gamma']:g}",
                     pct("accuracy"), pct("teacher_agreement"),
                     f"{test['saliency_agreement']:.3f}" if "saliency_agreement" in test else "-",
                     pct("saliency_top3_overlap")])
    return headers, body


def render(report: dict[str, Any], markdown: bool) -> str:
    table = common.markdown_table if markdown else common.text_table
    s = report["settings"]
    parts = []
    if markdown:
        parts += ["# quality benchmark (movie reviews)", "", common.environment_markdown(report["environment"]), ""]
    parts.append(
        f"teacher {s['teacher']}, train rows {s['train_rows'] or 'all'}, eval rows {s['eval_rows'] or 'all'}, "
        f"{s['epochs']} epochs, max length {s['max_length']}, batch {s['batch_size']}, lr {s['learning_rate']:g}, "
        f"beta {s['beta']:g}, gamma {s['gamma']:g}. Test metrics of the best-on-dev checkpoint; mean ± std "
        "over seeds. Saliency cos: mean cosine between teacher and student per-token input gradients over "
        "real tokens."
    )
    if s.get("student_init_model"):
        parts[-1] += (f" Every student starts from {s['student_init_model']} (its bottom layers; "
                      "`student.init.model`), not from the teacher's layers.")
    teacher = report.get("teacher_reference")
    if teacher:
        t = teacher["test"]
        parts.append(f"\nTeacher ({teacher['layers']} layers): test accuracy {t.get('accuracy', 0) * 100:.1f} %, "
                     f"macro-F1 {t.get('macro_f1', 0) * 100:.1f} %.")
    headers, body = main_table(report["summary"])
    parts += ["", "## methods x student depth" if markdown else "methods x student depth:", "", table(headers, body)]
    if any(r.get("group") == "sweep" for r in report["runs"]):
        headers, body = sweep_table(report["runs"])
        parts += ["", "## sweep (one seed)" if markdown else "sweep (one seed):", "", table(headers, body)]
    if report.get("plot") and markdown:
        parts += ["", f"![accuracy and saliency agreement vs student depth]({Path(report['plot']).name})"]
    return "\n".join(parts) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib; extra 'bench')")
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method in sorted({r["method"] for r in rows}, key=method_order):
        series = sorted((r for r in rows if r["method"] == method), key=lambda r: r["layers"])
        layers = [r["layers"] for r in series]
        for axis, metric, scale in ((axes[0], "accuracy", 100.0), (axes[1], "saliency_agreement", 1.0)):
            means = [r[metric]["mean"] * scale for r in series]
            stds = [r[metric]["std"] * scale for r in series]
            axis.errorbar(layers, means, yerr=stds, marker="o", capsize=3, label=method)
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].set_ylabel("saliency agreement (cosine)")
    for axis in axes:
        axis.set_xlabel("student layers")
        axis.set_xticks(sorted({r["layers"] for r in rows}))
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("movie reviews: students distilled from the example teacher (mean ± std over seeds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def finish(report: dict[str, Any], out: Path, args: argparse.Namespace) -> None:
    report["summary"] = aggregate(report["runs"], "main", ("layers", "method"))
    report["sweep_summary"] = aggregate(report["runs"], "sweep", ("method", "beta", "gamma"))
    if not args.no_plot and report["summary"]:
        png = plot(report["summary"], out.with_suffix(".png"))
        report["plot"] = str(png) if png else None
    common.write_json_atomic(out, report)
    out.with_suffix(".md").write_text(render(report, markdown=True), encoding="utf-8")


def merge(paths: Sequence[str], out: Path, args: argparse.Namespace,
          argv: Sequence[str] | None = None) -> dict[str, Any]:
    """One report from several result files made with the same settings; a run key seen twice is kept once."""
    reports = [json.loads(Path(path).read_text(encoding="utf-8")) for path in paths]
    first = reports[0]
    for path, report in zip(paths[1:], reports[1:], strict=True):
        changed = [k for k in SETTING_KEYS if report["settings"].get(k) != first["settings"].get(k)]
        if changed:
            raise SystemExit(f"{path} was made with other settings than {paths[0]}: {', '.join(changed)}")
    merged = {**first, "runs": []}
    merged["teacher_reference"] = next((r["teacher_reference"] for r in reports if r.get("teacher_reference")), None)
    merged["environment"] = common.environment(argv)
    merged["merged_from"] = [  # a file that was itself merged keeps its own sources
        {"file": str(path), "command": report.get("environment", {}).get("command"),
         **({"merged_from": report["merged_from"]} if report.get("merged_from") else {})}
        for path, report in zip(paths, reports, strict=True)]
    seen: set[str] = set()
    for report in reports:
        for run in report["runs"]:
            if run["key"] not in seen:
                seen.add(run["key"])
                merged["runs"].append(run)
    for key in ("layers", "methods", "seeds", "sweep_values"):
        values = {v for report in reports for v in report["settings"].get(key) or []}
        merged["settings"][key] = sorted(values) if values else None
    finish(merged, out, args)
    return merged


# ---------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    common.set_module_name("benchmarks.quality")  # the module-level name is the last imported script's
    args = parse_args(argv)
    if args.merge:
        report = merge(args.merge, Path(args.out), args, argv)
        print(render(report, markdown=False))
        print(f"merged {len(report['runs'])} runs into {args.out}")
        return report
    common.set_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="gkd-bench-quality-"))
    try:
        if args.tiny:
            teacher_dir = common.make_tiny_teacher(scratch / "teacher", num_layers=max(4, *args.layer_list),
                                                   max_positions=max(160, args.max_length + 8))
            data_dir = scratch / "data"
            data_dir.mkdir()
            sizes = {"train": args.train_rows or 64, "dev": args.eval_rows or 24, "test": args.eval_rows or 24}
            for offset, (name, count) in enumerate(sizes.items()):
                common.write_rows_csv(data_dir / f"{name}.csv", common.synthetic_rows(count, seed=offset))
            files = {name: data_dir / f"{name}.csv" for name in sizes}
        else:
            teacher_dir = Path(args.teacher)
            if not (teacher_dir / "config.json").is_file():
                raise SystemExit(f"teacher {teacher_dir} not found: run `gkd example-teacher`, pass --teacher "
                                 "DIR or use --tiny")
            files = common.movie_review_split_files(args.data_dir)
        device = resolve_device(args.device)
        teacher = load_teacher(teacher_dir, device=device)
        splits = split_examples(args, files)
        out = Path(args.out)
        report = load_previous(out, settings_of(args), args.fresh)
        report["environment"] = common.environment(argv)
        if "teacher_reference" not in report:
            report["teacher_reference"] = teacher_reference(args, files, splits, teacher, teacher_dir)
        done = {run["key"] for run in report["runs"]}
        todo = [run for run in plan_runs(args) if run["key"] not in done]
        print(f"{len(done)} runs already in {out}; {len(todo)} to do", flush=True)
        started = time.perf_counter()
        for number, run in enumerate(todo, start=1):
            record = execute(args, run, files, splits, teacher, teacher_dir)
            report["runs"].append(record)
            finish(report, out, args)  # append as we go: a killed benchmark resumes here
            elapsed = time.perf_counter() - started
            eta = elapsed / number * (len(todo) - number)
            test = record["test"]
            print(f"[{number}/{len(todo)}] {run['key']}: acc {test.get('accuracy', float('nan')):.4f} "
                  f"saliency {test.get('saliency_agreement', float('nan')):.3f} in {record['seconds']:.0f} s "
                  f"(eta {eta / 60:.1f} min)", flush=True)
        finish(report, out, args)
        print()
        print(render(report, markdown=False))
        print(f"wrote {out}, {out.with_suffix('.md')}" + (f", {report['plot']}" if report.get("plot") else ""))
        return report
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
