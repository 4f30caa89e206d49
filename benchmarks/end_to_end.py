"""BENCHMARKS.md item 4: the service's overhead on one small job, against the library alone, as a ratio.

    python -m benchmarks.end_to_end                  # example teacher, 400 rows, 1 epoch, 2-layer student, length 64
    python -m benchmarks.end_to_end --tiny --repeats 1 --stack sqlite     # tiny random teacher (seconds)

The same job runs two ways, `--repeats` times each, interleaved (library first in odd repeats, service first
in even ones), medians:

  library  `gkd.training.trainer.Trainer(config).train()` in this process: load the teacher, read and encode the data,
           open the teacher cache, train, evaluate, export the best and final checkpoints to disk;
  service  a real API (`uvicorn --factory app.main:create_app`, one process) and a real Celery worker
           (`python -m worker.cli`, started before any timing) on PostgreSQL + Redis (`--stack postgresql`,
           the default when both listen on loopback) or SQLite + the embedded broker (`--stack sqlite`, what
           `gkd serve` runs). The dataset is uploaded first (POST /v1/datasets, timed apart); the clock runs
           from POST /v1/jobs, through the job's SSE stream until its `succeeded` event, to a downloaded and
           sha256-checked checkpoint file (the `best` one, else `final`): queueing, claiming, events, progress
           writes, heartbeats, checkpoint packing and the download are the overhead measured.

Both use the same teacher directory, training rows, method and hyperparameters, the same torch thread count
(`--threads`; GKD_WORKER_NUM_THREADS for the worker), the CPU, and one shared teacher-cache directory
(GKD_CACHE_DIR for the worker). Warm-up, untimed: one library run (builds the teacher caches of the train and
dev splits, whose keys hash the teacher and the encoded rows, so the service's stored copy of the same CSV maps
to the same entries) and one service job (the worker imports torch/transformers and reads the teacher once).
Every timed run then finds the cache warm: the cache directory is listed before and after each run and a run
that added an entry is flagged. The service keeps its default poll intervals (SSE 0.5 s, broker 0.5 s;
with Redis, SSE streams are woken by pub/sub).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks import common

common.set_module_name("benchmarks.end_to_end")

from benchmarks.api import PG_SERVER, REDIS_URL, Server, fresh_database, reachable  # noqa: E402
from tests.support.broker import forget_redis_queue  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGET_OVERHEAD = 0.10


# ---------------------------------------------------------------- arguments
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.end_to_end", description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default=common.DEFAULT_TEACHER)
    parser.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    parser.add_argument("--tiny", action="store_true", help="tiny random teacher and synthetic rows (seconds)")
    parser.add_argument("--train-rows", type=int, default=400, help="rows of the training file (10%% become dev)")
    parser.add_argument("--method", default="gradient_kd")
    parser.add_argument("--layers", type=int, default=2, help="student layers")
    parser.add_argument("--student-embeddings", choices=("frozen", "trainable"), default=None,
                        help="student.embeddings of both runs (default: the library's, trainable)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each kind, interleaved")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of both (default: CPU count)")
    parser.add_argument("--stack", choices=("auto", "postgresql", "sqlite"), default="auto",
                        help="service databases: PostgreSQL + Redis, or SQLite + the embedded broker "
                             "(auto: PostgreSQL + Redis when both listen on loopback)")
    parser.add_argument("--job-timeout", type=float, default=900.0, help="seconds one job may take")
    parser.add_argument("--worker-start-timeout", type=float, default=180.0)
    parser.add_argument("--keep-logs", action="store_true", help="print the worker and API log tails at the end")
    parser.add_argument("--out", default=str(common.RESULTS_DIR / "end_to_end.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        if args.teacher == common.DEFAULT_TEACHER:
            args.teacher = None
        args.train_rows = min(args.train_rows, 64)
        args.max_length = min(args.max_length, 32)
        args.batch_size = min(args.batch_size, 16)
        args.layers = min(args.layers, 1)
    if args.threads is None:
        args.threads = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    if args.repeats < 1 or args.train_rows < 10:
        parser.error("--repeats must be >= 1 and --train-rows >= 10")
    if args.stack == "auto":
        args.stack = "postgresql" if reachable(5432) and reachable(6379) else "sqlite"
    elif args.stack == "postgresql" and not (reachable(5432) and reachable(6379)):
        parser.error("--stack postgresql needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379")
    return args


# ---------------------------------------------------------------- inputs
def prepare_inputs(args: argparse.Namespace, scratch: Path) -> tuple[Path, Path]:
    """The teacher directory and a text,label CSV of `--train-rows` rows."""
    train_csv = scratch / "train.csv"
    if args.tiny:
        teacher = common.make_tiny_teacher(scratch / "tiny-teacher", num_layers=2, hidden=32,
                                           max_positions=max(64, args.max_length + 8))
        common.write_rows_csv(train_csv, common.synthetic_rows(args.train_rows, seed=0))
        return teacher, train_csv
    teacher = Path(args.teacher)
    if not (teacher / "config.json").is_file():
        raise SystemExit(f"teacher {teacher} not found: train it with `gkd example-teacher` (make example-teacher), "
                         "pass --teacher DIR, or use --tiny")
    source = common.movie_review_split_files(args.data_dir)["train"]
    with source.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [(row["text"], row["label"]) for _, row in zip(range(args.train_rows), reader, strict=False)]
    if len(rows) < args.train_rows:
        raise SystemExit(f"{source} has only {len(rows)} rows")
    common.write_rows_csv(train_csv, rows)
    return teacher, train_csv


def hyperparameters(args: argparse.Namespace) -> dict[str, Any]:
    return {"epochs": args.epochs, "batch_size": args.batch_size, "max_length": args.max_length}


def student(args: argparse.Namespace) -> dict[str, Any]:
    return {"num_layers": args.layers, "embeddings": args.student_embeddings}


def cache_entries(cache_dir: Path) -> set[str]:
    return {p.name for p in cache_dir.iterdir()} if cache_dir.is_dir() else set()


# ---------------------------------------------------------------- library
def run_library(args: argparse.Namespace, teacher: Path, train_csv: Path, cache_dir: Path,
                out: Path) -> dict[str, Any]:
    """One library run: its wall time and the same phases the service run reports (from trainer callbacks)."""
    from gkd.config import DistillConfig
    from gkd.training.callbacks import TrainerCallback
    from gkd.training.trainer import Trainer

    class PhaseClock(TrainerCallback):
        """When training started and when the first checkpoint was exported, as the service's events say."""

        def __init__(self) -> None:
            self.marks: dict[str, float] = {}

        def on_train_begin(self, progress: Any) -> None:
            self.marks.setdefault("started", time.perf_counter())

        def on_checkpoint(self, progress: Any, kind: Any, path: Path) -> None:
            self.marks.setdefault("checkpoint", time.perf_counter())

    config = DistillConfig.parse({
        "method": args.method,
        "teacher": str(teacher),
        "student": student(args),
        "data": {"train": str(train_csv)},
        "hyperparameters": hyperparameters(args),
        "output_dir": str(out),
        "cache_dir": str(cache_dir),
        "device": "cpu",
        "num_threads": args.threads,
    })
    clock = PhaseClock()
    counters_start, stolen_start = common.process_counters() or {}, common.stolen_seconds()
    start = time.perf_counter()
    result = Trainer(config, [clock]).train(resume=False)
    end = time.perf_counter()
    counters_end, stolen_end = common.process_counters() or {}, common.stolen_seconds()
    if result.stopped or not (out / "final").is_dir():
        raise RuntimeError(f"library run did not finish: {result}")
    started, checkpoint = clock.marks.get("started", start), clock.marks.get("checkpoint", end)
    phases = {"prepare_s": started - start, "train_s": checkpoint - started, "checkpoints_s": end - checkpoint}
    return {"seconds": end - start, "phases": {k: round(v, 3) for k, v in phases.items()},
            "cpu_s": {**trainer_counters(counters_start, counters_end), **stolen(stolen_start, stolen_end)}}


def stolen(before: float | None, after: float | None) -> dict[str, float]:
    return {} if before is None or after is None else {"stolen": round(after - before, 3)}


def trainer_counters(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The training process's CPU (user, system) and minor page faults over one run."""
    return {f"trainer_{name}": round(after[name] - before[name], 3) for name in before if name in after}


# ---------------------------------------------------------------- service
def service_env(home: Path, database_url: str, broker_url: str, queue: str, cache_dir: Path,
                threads: int) -> dict[str, str]:
    return {
        **os.environ,
        "GKD_HOME": str(home),
        "GKD_DATABASE_URL": database_url,
        "GKD_BROKER_URL": broker_url,
        "GKD_TASK_QUEUE": queue,
        "GKD_CACHE_DIR": str(cache_dir),
        "GKD_MIGRATE_ON_START": "false",
        "GKD_WORKER_NUM_THREADS": str(threads),
        "GKD_WORKER_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(REPO),
    }


@contextlib.contextmanager
def database(stack: str, home: Path) -> Iterator[tuple[str, str]]:
    """(database URL, broker URL): a fresh PostgreSQL database + Redis, or SQLite + the embedded broker."""
    from app.store.db import upgrade

    if stack == "postgresql":
        with fresh_database(PG_SERVER) as url:
            yield url, REDIS_URL
        return
    url = f"sqlite:///{home / 'gkd.db'}"
    upgrade(url)
    yield url, ""


class Worker:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "--name", f"bench-e2e-{secrets.token_hex(3)}@%h",
                 "--loglevel", "INFO"],
                cwd=REPO, env=self.env, stdout=handle, stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            self.check()
            if " ready." in self.log.read_text(errors="replace"):
                return time.monotonic() - start
            time.sleep(0.2)
        raise RuntimeError(f"the worker did not start in {timeout:.0f} s:\n{self.log_tail()}")

    def check(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"the worker exited ({self.process.returncode}):\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def _iso(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def follow(client: Any, job_id: str, timeout: float, worker: Worker) -> list[dict[str, Any]]:
    """The job's events from its SSE stream until the terminal status; each gets `received_at` (epoch s)."""
    import httpx

    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    after = 0
    while time.monotonic() < deadline:
        headers = {"Last-Event-ID": str(after)} if after else {}
        try:
            with client.stream("GET", f"/v1/jobs/{job_id}/events/stream", headers=headers,
                               timeout=httpx.Timeout(30.0, read=60.0)) as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    if time.monotonic() > deadline:
                        break
                    if not line.startswith("data: "):
                        continue
                    event = json.loads(line[6:])
                    event["received_at"] = time.time()
                    events.append(event)
                    after = event["seq"]
                    if event["type"] == "status" and event["data"].get("status") in ("succeeded", "failed",
                                                                                     "cancelled"):
                        return events
        except httpx.ReadTimeout:
            pass  # a quiet minute (no keep-alive yet): reconnect from the last event
        worker.check()
    raise RuntimeError(f"job {job_id} did not finish in {timeout:.0f} s:\n{worker.log_tail()}")


def upload_dataset(client: Any, path: Path) -> tuple[str, float]:
    start = time.perf_counter()
    with path.open("rb") as handle:
        response = client.post("/v1/datasets", files={"file": (path.name, handle, "text/csv")})
    if response.status_code != 201:
        raise RuntimeError(f"dataset upload failed: {response.status_code} {response.text}")
    return response.json()["id"], time.perf_counter() - start


def cpu_snapshot(worker: Worker, server: Server) -> dict[str, Any]:
    """CPU seconds so far of each process a job runs through: where extra wall time is work, not waiting."""
    return {
        "trainer": (common.process_counters(worker.process.pid) if worker.process else None) or {},
        "api": server.cpu_seconds(),
        "client": time.process_time(),
        "databases": common.named_processes_cpu_seconds(("postgres", "redis-server")),
        "stolen": common.stolen_seconds(),
    }


def run_service(args: argparse.Namespace, client: Any, teacher_id: str, train_csv: Path, worker: Worker,
                server: Server, download_dir: Path) -> dict[str, Any]:
    """One job through the API; the wall time runs from POST /v1/jobs to the downloaded, checked checkpoint."""
    dataset_id, upload_s = upload_dataset(client, train_csv)
    body = {"teacher": teacher_id, "method": args.method, "student": student(args),
            "training_dataset": dataset_id, "hyperparameters": hyperparameters(args), "device": "cpu",
            "name": "bench end_to_end"}
    cpu_before = cpu_snapshot(worker, server)
    posted_at = time.time()
    start = time.perf_counter()
    response = client.post("/v1/jobs", json=body)
    if response.status_code != 201:
        raise RuntimeError(f"POST /v1/jobs failed: {response.status_code} {response.text}")
    post_s = time.perf_counter() - start
    job_id = response.json()["id"]
    events = follow(client, job_id, args.job_timeout, worker)
    streamed_at = time.perf_counter()
    cpu_after = cpu_snapshot(worker, server)
    final = events[-1]
    if final["data"].get("status") != "succeeded":
        raise RuntimeError(f"job {job_id} ended {final['data']}:\n{worker.log_tail()}")
    listing = client.get(f"/v1/jobs/{job_id}/checkpoints").raise_for_status().json()["data"]
    kinds = {c["kind"]: c for c in listing}
    chosen = kinds.get("best") or kinds["final"]
    target = download_dir / f"{job_id}-{chosen['kind']}.tar.gz"
    digest = hashlib.sha256()
    with client.stream("GET", f"/v1/jobs/{job_id}/checkpoints/{chosen['id']}/content") as download:
        download.raise_for_status()
        with target.open("wb") as handle:
            for chunk in download.iter_bytes(1 << 20):
                handle.write(chunk)
                digest.update(chunk)
    if digest.hexdigest() != chosen["sha256"]:
        raise RuntimeError(f"checkpoint {chosen['id']} sha256 mismatch")
    downloaded_at = time.perf_counter()
    elapsed = downloaded_at - start
    # Untimed: the archive holds a loadable model directory.
    with tarfile.open(target, "r:gz") as archive:
        names = archive.getnames()
    if "gkd_card.json" not in names or "config.json" not in names:
        raise RuntimeError(f"checkpoint archive lacks the model files: {names}")

    def at(predicate: Any) -> float | None:
        for event in events:
            if predicate(event):
                return _iso(event["created_at"])
        return None

    running = at(lambda e: e["type"] == "status" and e["data"].get("status") == "running")
    started = at(lambda e: e["type"] == "log" and str(e["message"]).startswith("training started"))
    checkpoint = at(lambda e: e["type"] == "checkpoint")
    succeeded = _iso(final["created_at"])
    phases = {
        "post_s": post_s,
        "queue_s": (running - posted_at) if running else None,  # POST sent -> worker claimed it
        "prepare_s": (started - running) if running and started else None,  # load teacher, data, cache
        "train_s": (checkpoint - started) if started and checkpoint else None,  # to the first checkpoint event
        "checkpoints_s": (succeeded - checkpoint) if checkpoint else None,  # packing/recording, then finishing
        "notify_s": final["received_at"] - succeeded,  # terminal event committed -> seen by the client
        "download_s": downloaded_at - streamed_at,
    }
    return {"seconds": elapsed, "job": job_id, "upload_s": upload_s, "events": len(events),
            "checkpoint_kind": chosen["kind"], "checkpoint_bytes": chosen["size_bytes"],
            "cpu_s": {**trainer_counters(cpu_before["trainer"], cpu_after["trainer"]),
                      **{k: round(cpu_after[k] - cpu_before[k], 3) for k in ("api", "client", "databases")},
                      **stolen(cpu_before["stolen"], cpu_after["stolen"])},
            "phases": {k: round(v, 3) if v is not None else None for k, v in phases.items()}}


def register(database_url: str, teacher: Path) -> tuple[str, str]:
    """A fresh tenant's API key and the teacher registered in place for it (as `gkd models import`)."""
    from app.registry import import_directory
    from app.store.db import session_scope
    from app.store.keys import create_key

    with session_scope(database_url) as session:
        plain, key = create_key(session, f"bench-e2e-{secrets.token_hex(4)}")
        model = import_directory(session, teacher, "bench-teacher", tenant_id=key.tenant_id)
        return plain, model.id


# ---------------------------------------------------------------- report
def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    library = [r["seconds"] for r in runs if r["kind"] == "library"]
    service = [r["seconds"] for r in runs if r["kind"] == "service"]
    pairs = {}
    for run in runs:
        pairs.setdefault(run["repeat"], {})[run["kind"]] = run["seconds"]
    pair_ratios = [p["service"] / p["library"] for p in pairs.values() if {"service", "library"} <= set(p)]
    lib_median, svc_median = common.median(library), common.median(service)
    ratio = svc_median / lib_median if lib_median else float("nan")
    def medians(kind: str, field: str) -> dict[str, float]:
        """Per name in the runs' `field` dict (phases, cpu_s): the median over this kind's runs that have it."""
        own = [r.get(field, {}) for r in runs if r["kind"] == kind]
        names = sorted({name for values in own for name in values})
        return {name: round(common.median([v[name] for v in own if v.get(name) is not None]), 3)
                for name in names}

    return {
        "library_s": library, "service_s": service,
        "library_median_s": round(lib_median, 3), "service_median_s": round(svc_median, 3),
        "ratio": round(ratio, 4), "overhead": round(ratio - 1, 4),
        "overhead_s": round(svc_median - lib_median, 3),
        "pair_ratios": [round(r, 4) for r in pair_ratios],
        "median_pair_ratio": round(common.median(pair_ratios), 4) if pair_ratios else None,
        "service_phases_median_s": medians("service", "phases"),
        "service_cpu_median_s": medians("service", "cpu_s"),
        "library_cpu_median_s": medians("library", "cpu_s"),
        "library_phases_median_s": medians("library", "phases"),
    }


def render(report: dict[str, Any], markdown: bool) -> str:
    table = common.markdown_table if markdown else common.text_table
    s, m = report["settings"], report["summary"]
    parts = []
    if markdown:
        parts += ["# end_to_end benchmark", "", common.environment_markdown(report["environment"]),
                  f"- background load: {report.get('background') or 'none seen'}", ""]
    parts.append(
        f"teacher {s['teacher']}, {s['train_rows']} training rows (10 % held out as dev), method {s['method']}, "
        f"{s['layers']}-layer student ({s.get('student_embeddings') or 'trainable'} embeddings), {s['epochs']} "
        f"epoch(s), batch {s['batch_size']}, max_length "
        f"{s['max_length']}, CPU, {s['threads']} torch threads; service on {s['stack']} with one uvicorn process "
        f"and one Celery worker (solo pool); teacher cache warm for both; {s['repeats']} interleaved repeats, medians."
    )
    body = [[r["repeat"], r["kind"], f"{r['seconds']:.2f}", "yes" if r.get("cache_warm") else "NO"]
            for r in report["runs"]]
    parts += ["", table(["repeat", "run", "wall s", "cache warm"], body)]
    parts += ["", table(["", "library", "service", "ratio", "overhead"],
                        [["median wall s", f"{m['library_median_s']:.2f}", f"{m['service_median_s']:.2f}",
                          f"{m['ratio']:.3f}", f"{100 * m['overhead']:+.1f} % ({m['overhead_s']:+.2f} s)"]])]
    if m.get("pair_ratios"):
        parts.append(f"\nper-repeat ratios: {', '.join(f'{r:.3f}' for r in m['pair_ratios'])} "
                     f"(median {m['median_pair_ratio']:.3f})")
    if len(m["library_s"]) > 1:  # the machine's own noise, against which the overhead is read
        low, high = min(m["library_s"]), max(m["library_s"])
        parts.append(f"library alone: {low:.2f} to {high:.2f} s over the repeats, a spread of "
                     f"{100 * (high - low) / m['library_median_s']:.0f} % of its median")
    ph, lib = m["service_phases_median_s"], m.get("library_phases_median_s") or {}
    if ph:
        order = ["post_s", "queue_s", "prepare_s", "train_s", "checkpoints_s", "notify_s", "download_s"]
        names = [n for n in order if n in ph]
        rows = [["service", *(f"{ph[n]:.3f}" for n in names)]]
        if lib:
            rows.append(["library", *(f"{lib[n]:.3f}" if n in lib else "-" for n in names)])
            rows.append(["service - library", *(f"{ph[n] - lib.get(n, 0.0):+.3f}" for n in names)])
        parts += ["", "## phases (median s)" if markdown else "phases (s):",
                  "", table(["", *(n.removesuffix("_s") for n in names)], rows)]
        parts.append("\nService phases from event timestamps, library phases from trainer callbacks at the same "
                     "points. post: POST /v1/jobs round trip; queue: POST -> `running` event (broker + claim); "
                     "prepare: -> `training started` (teacher, data, cache); train: -> first checkpoint (the "
                     "service's event comes after that checkpoint is packed); checkpoints: -> `succeeded` "
                     "(the library: -> train() returned; both export the final checkpoint and save the training "
                     "state, the service also packs and records the checkpoints and finishes the job); notify: "
                     "`succeeded` committed -> seen on the SSE stream; download: list + download + sha256 of the "
                     "checkpoint.")
    svc_cpu, lib_cpu = m.get("service_cpu_median_s") or {}, m.get("library_cpu_median_s") or {}
    if svc_cpu:
        names = [n for n in ("trainer_user", "trainer_system", "trainer_minor_faults", "api", "client", "databases",
                             "stolen") if n in svc_cpu]
        def cell(value: float | None, name: str) -> str:
            return "-" if value is None else f"{value:.0f}" if name.endswith("faults") else f"{value:.2f}"
        rows = [["service", *(cell(svc_cpu[n], n) for n in names)]]
        if lib_cpu:
            rows.append(["library", *(cell(lib_cpu.get(n), n) for n in names)])
        parts += ["", "## CPU time per run (median s)" if markdown else "CPU s:", "",
                  table(["", *(n.replace("_", " ") for n in names)], rows)]
        parts.append("\nUser and system CPU of each process over a run, all threads (/proc), and the trainer's minor "
                     "page faults (fresh memory the kernel zeroes): trainer is the Celery "
                     "worker from POST to the `succeeded` event (the library: `train()`), api the uvicorn "
                     "process, client this script (SSE stream, download), databases every postgres and "
                     "redis-server process on the machine, stolen the time the hypervisor gave other guests "
                     "(all CPUs; /proc/stat). Extra wall time with no extra CPU is waiting "
                     "(contention for the cores), extra CPU is extra work.")
    parts += common.targets_section(report["targets"], markdown)
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    common.set_module_name("benchmarks.end_to_end")  # the module-level name is the last imported script's
    args = parse_args(argv)
    common.set_threads(args.threads)
    import httpx

    scratch = Path(tempfile.mkdtemp(prefix="gkd-bench-e2e-"))
    cache_dir = scratch / "teacher_cache"
    home = scratch / "home"
    home.mkdir(parents=True)
    server: Server | None = None
    worker: Worker | None = None
    queue = f"bench-e2e-{secrets.token_hex(4)}"
    broker_url = ""
    try:
        teacher, train_csv = prepare_inputs(args, scratch)
        with database(args.stack, home) as (database_url, broker_url):
            env = service_env(home, database_url, broker_url, queue, cache_dir, args.threads)
            worker = Worker(env, scratch / "worker.log")
            worker.start()  # starts while the library warms up; both are ready before any timing
            print(f"[warm-up] library run (builds the teacher cache in {cache_dir})", flush=True)
            warm_library = run_library(args, teacher, train_csv, cache_dir, scratch / "lib-warmup")["seconds"]
            print(f"[warm-up] library {warm_library:.2f} s; cache entries {len(cache_entries(cache_dir))}", flush=True)
            ready_s = worker.wait_ready(args.worker_start_timeout)
            server = Server(env, 1, scratch / "api.log")
            server.start()
            key, teacher_id = register(database_url, teacher)
            headers = {"Authorization": f"Bearer {key}"}
            downloads = scratch / "downloads"
            downloads.mkdir()
            with httpx.Client(base_url=server.url, headers=headers, timeout=60.0) as client:
                before = cache_entries(cache_dir)
                warm_service = run_service(args, client, teacher_id, train_csv, worker, server, downloads)
                print(f"[warm-up] service {warm_service['seconds']:.2f} s (worker ready after {ready_s:.1f} s); "
                      f"cache entries {len(before)} -> {len(cache_entries(cache_dir))}", flush=True)
                background = common.background_load()
                runs: list[dict[str, Any]] = []
                for repeat in range(1, args.repeats + 1):
                    order = ("library", "service") if repeat % 2 else ("service", "library")
                    for kind in order:
                        before = cache_entries(cache_dir)
                        if kind == "library":
                            out = scratch / f"lib-{repeat}"
                            run = run_library(args, teacher, train_csv, cache_dir, out)
                            shutil.rmtree(out, ignore_errors=True)
                        else:
                            run = run_service(args, client, teacher_id, train_csv, worker, server, downloads)
                        run.update(kind=kind, repeat=repeat, cache_warm=cache_entries(cache_dir) == before)
                        runs.append(run)
                        print(f"  repeat {repeat} {kind:<8} {run['seconds']:7.2f} s"
                              + ("" if run["cache_warm"] else "  (teacher cache was built!)"), flush=True)
                        for download in downloads.iterdir():
                            download.unlink()
            server_errors = [line for line in server.log_tail(20000).splitlines() if "Traceback" in line]
            server.stop()
            server = None
            worker.stop()
            forget_redis_queue(broker_url, queue)
        summary = summarise(runs)
        report: dict[str, Any] = {
            "benchmark": "end_to_end",
            "environment": common.environment(argv),
            "settings": {
                "teacher": "tiny" if args.tiny else str(args.teacher), "train_rows": args.train_rows,
                "method": args.method, "layers": args.layers, "student_embeddings": args.student_embeddings,
                "epochs": args.epochs, "batch_size": args.batch_size,
                "max_length": args.max_length, "repeats": args.repeats, "threads": args.threads,
                "stack": "PostgreSQL + Redis" if args.stack == "postgresql" else "SQLite + embedded broker",
                "tiny": args.tiny,
            },
            "background": background,
            "warmup": {"library_s": round(warm_library, 3), "service_s": round(warm_service["seconds"], 3),
                       "worker_ready_s": round(ready_s, 2)},
            "runs": runs,
            "summary": summary,
            "server_log_tracebacks": server_errors[:10],
        }
        warm = all(r["cache_warm"] for r in runs)
        report["targets"] = [
            {"name": f"service overhead < {100 * TARGET_OVERHEAD:.0f} % (median service / median library - 1)",
             "value": f"{100 * summary['overhead']:+.1f} %", "threshold": TARGET_OVERHEAD,
             "pass": summary["overhead"] < TARGET_OVERHEAD},
            {"name": "teacher cache warm in every timed run", "value": warm, "threshold": True, "pass": warm},
        ]
        out = Path(args.out)
        common.write_json_atomic(out, report)
        out.with_suffix(".md").write_text(render(report, markdown=True), encoding="utf-8")
        print()
        print(render(report, markdown=False))
        if args.keep_logs:
            print(worker.log_tail() if worker else "")
        print(f"wrote {out} and {out.with_suffix('.md')}")
        return report
    finally:
        if server is not None:
            server.stop()
        if worker is not None:
            worker.stop()
        forget_redis_queue(broker_url, queue)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
