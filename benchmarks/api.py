"""BENCHMARKS.md item 3: the API under load on loopback, with many SSE streams open.

    python -m benchmarks.api                     # PostgreSQL + Redis, 4 uvicorn workers, 100 streams, 10 s/endpoint
    python -m benchmarks.api --tiny              # seconds: 1 worker, 4 streams, 1 s per endpoint (smoke test)

Set-up, all on 127.0.0.1: a fresh PostgreSQL database (created, migrated with `app.store.db.upgrade`, dropped at the
end), GKD_BROKER_URL pointing at Redis (so SSE streams also subscribe to Redis wake-ups, as in production),
one tenant with an API key (`app.store.keys.create_key`), a teacher and a dataset row, and `--jobs` jobs inserted
through the ORM with their events (running, succeeded, failed, queued; no training). Then
`uvicorn --factory app.main:create_app --workers N --no-access-log` on a free loopback port.

`--streams` SSE streams (GET /v1/jobs/{id}/events/stream of running jobs) are opened with httpx and held open
during every measurement; each must have answered 200 and its first line before the load starts, and must still
be connected when the load stops (counted before and after each run).

Load: `wrk` when installed (C, low CPU of its own: `apt-get install wrk`), else a bounded async httpx client.
Fixed concurrency (`--concurrency` connections), `--duration` seconds per endpoint after `--warmup` seconds
of unmeasured load, `--rounds` rounds alternating the endpoints; figures are medians over rounds.
Endpoints: `job_status` (GET /v1/jobs/{id}, ids cycled over all jobs) and `list` (GET /v1/jobs?limit=20).
Errors: any non-2xx answer, timeout, or connection/read/write error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks import common

common.set_module_name("benchmarks.api")

REPO = Path(__file__).resolve().parents[1]
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
REDIS_URL = "redis://127.0.0.1:6379/0"
# Issue 25's targets (quiet machine, medians of 3 rounds).
TARGET_STATUS_RPS = 3000.0
TARGET_STATUS_P99_MS = 30.0
TARGET_STATUS_CPU_MS = 0.6
TARGET_LIST_RPS = 1000.0
TARGET_STREAMS_OPEN_S = 1.0
ENDPOINTS = ("job_status", "list")


# ---------------------------------------------------------------- arguments
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.api", description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=4, help="uvicorn worker processes")
    parser.add_argument("--jobs", type=int, default=300, help="jobs inserted (at least --streams are running)")
    parser.add_argument("--events-per-job", type=int, default=6)
    parser.add_argument("--streams", type=int, default=100, help="SSE streams held open during the load")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="load connections (16 already saturate 4 workers on 2 cores: 32 gave the same req/s "
                        "with every request waiting twice as long in the queue)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per endpoint and round")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds of load before each run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the endpoints (medians reported)")
    parser.add_argument("--list-limit", type=int, default=20)
    parser.add_argument("--driver", choices=("auto", "wrk", "httpx"), default="auto",
                        help="load generator: wrk when installed (auto), else httpx")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--max-requests", type=int, default=2_000_000,
                        help="httpx driver: hard cap on requests per run (bounds the loop besides the duration)")
    parser.add_argument("--request-timeout", type=float, default=10.0, help="seconds; a slower answer is an error")
    parser.add_argument("--pg-server", default=PG_SERVER, help="PostgreSQL server URL (no database name)")
    parser.add_argument("--redis-url", default=REDIS_URL, help="GKD_BROKER_URL (and SSE notify URL)")
    parser.add_argument("--sse-poll-seconds", type=float, default=None,
                        help="GKD_SSE_POLL_SECONDS of the server (default: the service's default)")
    parser.add_argument("--rate-limit", default="1000000/second",
                        help="GKD_RATE_LIMIT of the server: by default a limit the load never reaches, so every "
                        "request pays for the limiter (counted in Redis) without being refused; '' turns it off")
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke settings")
    parser.add_argument("--keep-log", action="store_true", help="print the server log at the end")
    parser.add_argument("--out", default=str(common.RESULTS_DIR / "api.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.workers, args.jobs, args.streams, args.concurrency = 1, 20, 4, 4
        args.duration, args.warmup, args.rounds, args.events_per_job = 1.0, 0.3, 1, 3
    if args.streams > args.jobs:
        parser.error("--streams cannot exceed --jobs (each stream follows its own running job)")
    if min(args.workers, args.jobs, args.concurrency, args.rounds) < 1 or args.duration <= 0:
        parser.error("--workers, --jobs, --concurrency, --rounds and --duration must be positive")
    return args


# ---------------------------------------------------------------- database and data
def reachable(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fresh_database(server: str) -> contextlib.AbstractContextManager[str]:
    """A new, migrated PostgreSQL database; dropped (WITH FORCE) on exit."""
    from tests.support.postgres import temporary_postgres_database

    return temporary_postgres_database(server, prefix="gkd_bench")


@dataclass
class Seeded:
    key: str
    tenant_id: str
    job_ids: list[str]
    running_ids: list[str]
    events: int
    statuses: dict[str, int] = field(default_factory=dict)


def seed(url: str, jobs: int, running: int, events_per_job: int) -> Seeded:
    """One tenant + key, a teacher and a dataset row, `jobs` jobs (the first `running` running) and their events."""
    from app.store.db import session_scope
    from app.store.ids import new_id
    from app.store.keys import create_key
    from app.store.orm import Dataset, Job, JobEvent, TeacherModel, utcnow

    cycle = ("succeeded", "succeeded", "failed", "queued", "cancelled")
    with session_scope(url) as session:
        plain, key = create_key(session, f"bench-{secrets.token_hex(4)}")
        tenant_id = key.tenant_id
        teacher = TeacherModel(id=new_id("mdl"), tenant_id=tenant_id, name="bench-teacher", path="models/none",
                               source="import", task="text-classification", model_type="bert",
                               labels=["negative", "positive"], num_layers=6, hidden_size=384,
                               num_parameters=22_000_000, vocab_size=30522)
        dataset = Dataset(id=new_id("ds"), tenant_id=tenant_id, name="train.csv", format="csv", rows=400,
                          labels=["negative", "positive"], sha256="0" * 64, size_bytes=40_000,
                          validation={}, path="datasets/none.csv")
        session.add_all([teacher, dataset])
        session.flush()
        now = utcnow()
        job_ids, running_ids, statuses, total_events = [], [], {}, 0
        for i in range(jobs):
            status = "running" if i < running else cycle[i % len(cycle)]
            statuses[status] = statuses.get(status, 0) + 1
            created = now - timedelta(seconds=jobs - i)
            job = Job(
                id=new_id("job"), tenant_id=tenant_id, status=status, method="gradient_kd", teacher_id=teacher.id,
                training_dataset_id=dataset.id, validation_dataset_id=None,
                student={"num_layers": 2, "init": "spread"},
                hyperparameters={"epochs": 1, "batch_size": 32, "max_length": 64, "learning_rate": 5e-5},
                name=f"bench job {i}", meta={"bench": "api", "index": i},
                progress={"step": 5, "total_steps": 12, "epoch": 0, "fraction": 0.42, "eta_seconds": 3.0},
                metrics={"latest": {"loss": 0.5, "accuracy": 0.8}, "best": {"accuracy": 0.8}},
                versions={"torch": "bench"}, attempts=0 if status == "queued" else 1, last_seq=0,
                worker=None if status == "queued" else "bench:0", created_at=created, enqueued_at=created,
                started_at=None if status == "queued" else created, heartbeat_at=created,
                finished_at=created if status in ("succeeded", "failed", "cancelled") else None,
                error="RuntimeError: bench" if status == "failed" else None,
            )
            session.add(job)
            rows = [("status", "job queued", {"status": "queued"})]
            if status != "queued":
                rows.append(("status", "job running on bench:0 (attempt 1)", {"status": "running"}))
                for step in range(1, max(1, events_per_job - 3) + 1):
                    rows.append(("metrics", f"step {step}/12 loss 0.5", {"loss": 0.5, "step": step, "epoch": 0}))
                if status != "running":
                    rows.append(("status", f"job {status}", {"status": status}))
            for seq, (type_, message, data) in enumerate(rows, start=1):
                session.add(JobEvent(job_id=job.id, seq=seq, type=type_, message=message, data=data,
                                     created_at=created))
            job.last_seq = len(rows)
            total_events += len(rows)
            job_ids.append(job.id)
            if status == "running":
                running_ids.append(job.id)
            if i % 100 == 99:
                session.flush()
    return Seeded(plain, tenant_id, job_ids, running_ids, total_events, statuses)


# ---------------------------------------------------------------- server
class Server:
    """`uvicorn --factory app.main:create_app --workers N` on a free loopback port."""

    def __init__(self, env: dict[str, str], workers: int, log: Path, root: Path = REPO) -> None:
        self.env, self.workers, self.log, self.root = env, workers, log, root  # root: the checkout served
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--host", "127.0.0.1",
                "--port", str(self.port), "--workers", str(self.workers), "--no-access-log", "--log-level",
                "warning"]

    def start(self, timeout: float = 90.0) -> None:
        import httpx

        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(self.command, cwd=self.root, env=self.env, stdout=handle,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        ready: set[int] = set()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"uvicorn exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    ready.add(1)
            except httpx.HTTPError:
                pass
            if ready and len(self.worker_pids()) >= self.workers:
                time.sleep(0.5 if self.workers > 1 else 0)  # the last workers finish their start-up
                return
            time.sleep(0.2)
        raise RuntimeError(f"uvicorn did not start in {timeout:.0f} s:\n{self.log_tail()}")

    def worker_pids(self) -> list[int]:
        if self.process is None:
            return []
        if self.workers == 1:
            return [self.process.pid]
        try:
            out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True,
                                 timeout=5).stdout
        except (OSError, subprocess.TimeoutExpired):
            return []
        return [int(p) for p in out.split()]

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server's processes so far (Linux /proc)."""
        pids = self.worker_pids() + ([self.process.pid] if self.process and self.workers > 1 else [])
        return sum(common.process_cpu_seconds(pid) or 0.0 for pid in pids)

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        self.process = None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def server_env(home: Path, database_url: str, redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "GKD_HOME": str(home),
        "GKD_DATABASE_URL": database_url,
        "GKD_BROKER_URL": redis_url,
        "GKD_MIGRATE_ON_START": "false",
        "GKD_TASK_QUEUE": f"bench-{secrets.token_hex(4)}",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }


# ---------------------------------------------------------------- SSE streams
class Streams:
    """`count` SSE streams held open; counts how many answered and how many are still connected."""

    def __init__(self, url: str, key: str, job_ids: Sequence[str], connect_timeout: float = 60.0) -> None:
        self.url, self.key, self.job_ids = url, key, list(job_ids)
        self.connect_timeout = connect_timeout
        self.connected: set[int] = set()
        self.failures: list[str] = []
        self.bytes = 0
        self.tasks: list[asyncio.Task[None]] = []
        self.client: Any = None
        self.closing = False

    async def _follow(self, index: int, job_id: str) -> None:
        headers = {"Authorization": f"Bearer {self.key}", "Accept": "text/event-stream"}
        try:
            async with self.client.stream("GET", f"{self.url}/v1/jobs/{job_id}/events/stream", headers=headers) as r:
                if r.status_code != 200:
                    self.failures.append(f"{job_id}: HTTP {r.status_code}")
                    return
                async for chunk in r.aiter_bytes():
                    self.bytes += len(chunk)
                    self.connected.add(index)
            if not self.closing:
                self.failures.append(f"{job_id}: stream ended")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
            if not self.closing:
                self.failures.append(f"{job_id}: {type(exc).__name__}: {exc}")
        finally:
            self.connected.discard(index)

    async def open(self) -> float:
        """Open every stream; returns the seconds until all had sent their first bytes."""
        import httpx

        limits = httpx.Limits(max_connections=len(self.job_ids) + 10, max_keepalive_connections=0)
        timeout = httpx.Timeout(10.0, read=None)
        self.client = httpx.AsyncClient(limits=limits, timeout=timeout)
        start = time.perf_counter()
        self.tasks = [asyncio.create_task(self._follow(i, job)) for i, job in enumerate(self.job_ids)]
        deadline = time.monotonic() + self.connect_timeout
        while len(self.connected) < len(self.job_ids) and time.monotonic() < deadline:
            if self.failures:
                break
            await asyncio.sleep(0.05)
        return time.perf_counter() - start

    @property
    def open_count(self) -> int:
        return len(self.connected)

    async def close(self) -> None:
        self.closing = True
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.client is not None:
            await self.client.aclose()


# ---------------------------------------------------------------- load drivers
@dataclass
class LoadResult:
    requests: int
    seconds: float
    errors: int
    error_detail: dict[str, int]
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


WRK_SCRIPT = """
local paths = {%(paths)s}
local counter = %(offset)d
wrk.headers["Authorization"] = "Bearer %(key)s"
setup = function(thread)
  counter = counter + 1
  thread:set("offset", counter * 7919)
end
init = function(args)
  counter = offset or 0
end
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter %% #paths) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("GKD_RESULT %%d %%d %%d %%d %%d %%d %%d %%.1f %%.1f %%.1f %%.1f %%.1f\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max, latency.mean))
end
"""


def wrk_script(paths: Sequence[str], key: str, directory: Path) -> Path:
    script = directory / f"load-{secrets.token_hex(3)}.lua"
    quoted = ", ".join(f'"{p}"' for p in paths)
    script.write_text(WRK_SCRIPT % {"paths": quoted, "key": key, "offset": 0}, encoding="utf-8")
    return script


async def run_wrk(url: str, script: Path, args: argparse.Namespace, duration: float) -> LoadResult:
    seconds = max(1, round(duration))
    threads = max(1, min(args.wrk_threads, args.concurrency))
    command = ["wrk", "-t", str(threads), "-c", str(args.concurrency), "-d", f"{seconds}s", "--timeout",
               f"{max(1, round(args.request_timeout))}s", "-s", str(script), url]
    proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=seconds + 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError("wrk did not finish in time") from None
    text = out.decode(errors="replace")
    match = re.search(r"GKD_RESULT (.+)", text)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{text[-2000:]}")
    v = match.group(1).split()
    requests, micros = int(v[0]), int(v[1])
    detail = {"connect": int(v[2]), "read": int(v[3]), "write": int(v[4]), "status": int(v[5]), "timeout": int(v[6])}
    p50, p95, p99, mx, mean = (float(x) / 1000 for x in v[7:12])
    return LoadResult(requests, micros / 1e6, sum(detail.values()), detail, p50, p95, p99, mx, mean)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return float(sorted_values[index])


async def run_httpx(url: str, paths: Sequence[str], key: str, args: argparse.Namespace,
                    duration: float) -> LoadResult:
    """`concurrency` tasks over one pooled client, until `duration` passes or `max_requests` are sent."""
    import httpx

    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    headers = {"Authorization": f"Bearer {key}"}
    latencies: list[float] = []
    errors: dict[str, int] = {}
    budget = [args.max_requests]

    async with httpx.AsyncClient(base_url=url, limits=limits, headers=headers,
                                 timeout=args.request_timeout) as client:
        start = time.perf_counter()
        deadline = start + duration

        async def one(worker: int) -> None:
            i = worker * 7919
            while time.perf_counter() < deadline and budget[0] > 0:
                budget[0] -= 1
                i += 1
                t0 = time.perf_counter()
                try:
                    response = await client.get(paths[i % len(paths)])
                    await response.aread()
                    if response.status_code >= 300:
                        errors["status"] = errors.get("status", 0) + 1
                        continue
                except httpx.TimeoutException:
                    errors["timeout"] = errors.get("timeout", 0) + 1
                    continue
                except httpx.HTTPError as exc:
                    name = type(exc).__name__
                    errors[name] = errors.get(name, 0) + 1
                    continue
                latencies.append((time.perf_counter() - t0) * 1000)

        await asyncio.wait_for(asyncio.gather(*(one(w) for w in range(args.concurrency))),
                               timeout=duration + args.request_timeout + 30)
        seconds = time.perf_counter() - start
    latencies.sort()
    count = len(latencies) + sum(errors.values())
    return LoadResult(count, seconds, sum(errors.values()), errors, percentile(latencies, 50),
                      percentile(latencies, 95), percentile(latencies, 99), latencies[-1] if latencies else 0.0,
                      statistics.fmean(latencies) if latencies else float("nan"))


# ---------------------------------------------------------------- measurement
def endpoint_paths(name: str, seeded: Seeded, list_limit: int) -> list[str]:
    if name == "job_status":
        return [f"/v1/jobs/{job}" for job in seeded.job_ids]
    return [f"/v1/jobs?limit={list_limit}"]


async def check_answers(url: str, key: str, seeded: Seeded, list_limit: int) -> dict[str, Any]:
    """One request of each kind, checked for content: the load must measure real answers."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as client:
        job = (await client.get(f"/v1/jobs/{seeded.job_ids[0]}")).raise_for_status().json()
        listing = (await client.get(f"/v1/jobs?limit={list_limit}")).raise_for_status().json()
        unauthorised = (await client.get(f"/v1/jobs/{seeded.job_ids[0]}", headers={"Authorization": "Bearer x"}))
    if job["id"] != seeded.job_ids[0] or job["status"] != "running":
        raise RuntimeError(f"unexpected job answer: {job}")
    if len(listing["data"]) != min(list_limit, len(seeded.job_ids)):
        raise RuntimeError(f"unexpected list answer: {len(listing['data'])} jobs")
    if unauthorised.status_code != 401:
        raise RuntimeError(f"a bad key got {unauthorised.status_code}")
    return {"job_bytes": len(str(job)), "list_items": len(listing["data"])}


async def measure(args: argparse.Namespace, server: Server, seeded: Seeded, scratch: Path,
                  driver: str) -> dict[str, Any]:
    answers = await check_answers(server.url, seeded.key, seeded, args.list_limit)
    streams = Streams(server.url, seeded.key, seeded.running_ids[: args.streams])
    open_seconds = await streams.open()
    if streams.open_count < args.streams:
        await streams.close()
        raise RuntimeError(f"only {streams.open_count}/{args.streams} SSE streams opened: {streams.failures[:5]}\n"
                           f"{server.log_tail()}")
    print(f"{streams.open_count} SSE streams open after {open_seconds:.2f} s", flush=True)
    # What the open streams cost by themselves (their database polls), before any load.
    await asyncio.sleep(min(1.0, args.duration))
    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    await asyncio.sleep(min(3.0, args.duration))
    idle_cpu = (server.cpu_seconds() - cpu0) / (time.perf_counter() - t0)
    print(f"server CPU with the streams open and no load: {100 * idle_cpu:.0f} % of one core", flush=True)
    runs: list[dict[str, Any]] = []
    try:
        for round_index in range(args.rounds):
            order = ENDPOINTS if round_index % 2 == 0 else tuple(reversed(ENDPOINTS))
            for name in order:
                paths = endpoint_paths(name, seeded, args.list_limit)
                if driver == "wrk":
                    script = wrk_script(paths, seeded.key, scratch)
                    if args.warmup > 0:
                        await run_wrk(server.url, script, args, args.warmup)
                    before, cpu0 = streams.open_count, server.cpu_seconds()
                    result = await run_wrk(server.url, script, args, args.duration)
                else:
                    if args.warmup > 0:
                        await run_httpx(server.url, paths, seeded.key, args, args.warmup)
                    before, cpu0 = streams.open_count, server.cpu_seconds()
                    result = await run_httpx(server.url, paths, seeded.key, args, args.duration)
                cpu = server.cpu_seconds() - cpu0
                after = streams.open_count
                run = {"endpoint": name, "round": round_index + 1, "requests": result.requests,
                       "seconds": round(result.seconds, 3), "rps": round(result.rps, 1),
                       "p50_ms": round(result.p50_ms, 2), "p95_ms": round(result.p95_ms, 2),
                       "p99_ms": round(result.p99_ms, 2), "max_ms": round(result.max_ms, 2),
                       "mean_ms": round(result.mean_ms, 2), "errors": result.errors,
                       "error_detail": result.error_detail, "streams_open_before": before,
                       "streams_open_after": after, "server_cpu_s": round(cpu, 2),
                       "server_cpu_ms_per_request": round(1000 * cpu / result.requests, 3) if result.requests else None}
                runs.append(run)
                print(f"  round {round_index + 1} {name:<10} {run['rps']:8.1f} req/s  p50 {run['p50_ms']:6.2f} ms  "
                      f"p99 {run['p99_ms']:7.2f} ms  errors {run['errors']}  streams {before}->{after}", flush=True)
    finally:
        stream_failures = list(streams.failures)
        final_open = streams.open_count
        await streams.close()
    return {"runs": runs, "answers": answers, "streams": {
        "requested": args.streams, "opened": args.streams, "open_seconds": round(open_seconds, 3),
        "open_at_end": final_open, "failures": stream_failures[:20], "failure_count": len(stream_failures),
        "bytes_received": streams.bytes, "idle_server_cpu_cores": round(idle_cpu, 3),
    }}


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name in ENDPOINTS:
        mine = [r for r in runs if r["endpoint"] == name]
        if not mine:
            continue
        rows.append({
            "endpoint": name,
            "path": "GET /v1/jobs/{id}" if name == "job_status" else "GET /v1/jobs?limit=N",
            "rounds": len(mine),
            "rps": round(common.median([r["rps"] for r in mine]), 1),
            "p50_ms": round(common.median([r["p50_ms"] for r in mine]), 2),
            "p95_ms": round(common.median([r["p95_ms"] for r in mine]), 2),
            "p99_ms": round(common.median([r["p99_ms"] for r in mine]), 2),
            "max_ms": round(max(r["max_ms"] for r in mine), 2),
            "requests": sum(r["requests"] for r in mine),
            "errors": sum(r["errors"] for r in mine),
            "streams_min_open": min(min(r["streams_open_before"], r["streams_open_after"]) for r in mine),
            "server_cpu_ms_per_request": common.median([r["server_cpu_ms_per_request"] or 0.0 for r in mine]),
        })
    return rows


def _target(name: str, value: float, threshold: float, passed: bool) -> dict[str, Any]:
    return {"name": name, "value": value, "threshold": threshold, "pass": passed}


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = {r["endpoint"]: r for r in report["summary"]}
    status, listing = rows.get("job_status"), rows.get("list")
    streams = report["streams"]
    targets = []
    if status is not None:
        cpu = status["server_cpu_ms_per_request"]
        targets += [
            _target(f"GET /v1/jobs/{{id}} >= {TARGET_STATUS_RPS:,.0f} req/s", status["rps"], TARGET_STATUS_RPS,
                    status["rps"] >= TARGET_STATUS_RPS),
            _target(f"GET /v1/jobs/{{id}} p99 < {TARGET_STATUS_P99_MS:.0f} ms", status["p99_ms"], TARGET_STATUS_P99_MS,
                    status["p99_ms"] < TARGET_STATUS_P99_MS),
            _target(f"GET /v1/jobs/{{id}} server CPU < {TARGET_STATUS_CPU_MS} ms/req", cpu, TARGET_STATUS_CPU_MS,
                    0 < cpu < TARGET_STATUS_CPU_MS),
        ]
    if listing is not None:
        targets.append(_target(f"GET /v1/jobs?limit=N >= {TARGET_LIST_RPS:,.0f} req/s", listing["rps"],
                               TARGET_LIST_RPS, listing["rps"] >= TARGET_LIST_RPS))
    opened_in = streams.get("open_seconds")
    if streams["requested"] and opened_in is not None:
        targets.append(_target(f"{streams['requested']} SSE streams opened in < {TARGET_STREAMS_OPEN_S:.0f} s",
                               opened_in, TARGET_STREAMS_OPEN_S, opened_in < TARGET_STREAMS_OPEN_S))
    errors = sum(r["errors"] for r in report["summary"])
    targets.append(_target("zero errors (all endpoints, all rounds)", errors, 0, errors == 0))
    kept = min([r["streams_min_open"] for r in report["summary"]] + [streams["requested"]])
    targets.append(_target(f"all {streams['requested']} SSE streams open throughout", kept, streams["requested"],
                           kept == streams["requested"] and streams["failure_count"] == 0))
    return targets


def render(report: dict[str, Any], markdown: bool) -> str:
    table = common.markdown_table if markdown else common.text_table
    s = report["settings"]
    parts = []
    if markdown:
        parts += ["# api benchmark", "", common.environment_markdown(report["environment"]),
                  f"- load generator: {s['driver']}" + (f" ({s['wrk_version']})" if s.get("wrk_version") else ""),
                  f"- background load: {report.get('background') or 'none seen'}", ""]
    parts.append(
        f"PostgreSQL + Redis on loopback, `uvicorn --workers {s['workers']} --no-access-log` "
        f"({s.get('http', 'h11')}), {s['jobs']} jobs ({s['events']} events) of one tenant, {s['streams']} SSE streams "
        f"open during every run (woken by Redis, each also reads the database every "
        f"{s.get('sse_fallback_poll_seconds', s.get('sse_poll_seconds', 0.5)):g} s as a safety net); load: "
        f"{s['driver']}, {s['concurrency']} connections, {s['warmup']:g} s warm-up + {s['duration']:g} s measured "
        f"per endpoint, {s['rounds']} round(s) alternating the endpoints, medians over rounds."
    )
    headers = ["endpoint", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "requests", "errors",
               "SSE open (min)", "server CPU ms/req"]
    body = [[r["path"], f"{r['rps']:.0f}", f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}", f"{r['p99_ms']:.2f}",
             f"{r['max_ms']:.1f}", r["requests"], r["errors"], f"{r['streams_min_open']}/{s['streams']}",
             f"{r['server_cpu_ms_per_request']:.2f}"] for r in report["summary"]]
    parts += ["", table(headers, body)]
    st = report["streams"]
    parts += ["", f"SSE: {st['opened']} opened in {st['open_seconds']:.2f} s, {st['open_at_end']} still open at the "
              f"end, {st['failure_count']} failures; with them open and no load the server used "
              f"{100 * st['idle_server_cpu_cores']:.0f} % of one core. Server CPU ms/req: the uvicorn processes' CPU "
              "time during the run (streams included) per request."]
    parts += common.targets_section(report["targets"], markdown)
    if markdown:
        parts += ["", "## runs", "", common.markdown_table(
            ["round", "endpoint", "req/s", "p50 ms", "p99 ms", "errors", "SSE before/after"],
            [[r["round"], r["endpoint"], r["rps"], r["p50_ms"], r["p99_ms"], r["errors"],
              f"{r['streams_open_before']}/{r['streams_open_after']}"] for r in report["runs"]])]
    return "\n".join(parts) + "\n"


def default_sse_poll(name: str = "sse_poll_seconds") -> float:
    from app.store.settings import Settings

    return float(Settings.model_fields[name].default)


def http_implementation() -> str:
    """What uvicorn's `--http auto` picks: httptools when installed (uvicorn[standard]), else h11."""
    import importlib.util

    return "httptools" if importlib.util.find_spec("httptools") else "h11"


def choose_driver(requested: str) -> str:
    if requested == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk), use --driver httpx")
    if requested == "auto":
        return "wrk" if shutil.which("wrk") else "httpx"
    return requested


# ---------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    common.set_module_name("benchmarks.api")  # the module-level name is the last imported script's
    args = parse_args(argv)
    driver = choose_driver(args.driver)
    if not reachable(5432):
        raise SystemExit("PostgreSQL is not listening on 127.0.0.1:5432")
    if not reachable(6379):
        raise SystemExit("Redis is not listening on 127.0.0.1:6379")
    scratch = Path(tempfile.mkdtemp(prefix="gkd-bench-api-"))
    server: Server | None = None
    try:
        with fresh_database(args.pg_server) as url:
            start = time.perf_counter()
            seeded = seed(url, args.jobs, args.streams, args.events_per_job)
            print(f"seeded {len(seeded.job_ids)} jobs ({seeded.statuses}), {seeded.events} events in "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
            env = server_env(scratch / "home", url, args.redis_url)
            if args.sse_poll_seconds is not None:
                env["GKD_SSE_POLL_SECONDS"] = str(args.sse_poll_seconds)
            env["GKD_RATE_LIMIT"] = args.rate_limit
            env["GKD_SSE_STREAMS_PER_TENANT"] = str(max(args.streams, 1) + 10)
            server = Server(env, args.workers, scratch / "api.log")
            server.start()
            print(f"uvicorn on {server.url}: {args.workers} worker(s); driver {driver}", flush=True)
            background = common.background_load()
            result = asyncio.run(measure(args, server, seeded, scratch, driver))
            wrk_version = None
            if driver == "wrk":
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    first = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=5)
                    wrk_version = (first.stdout or first.stderr).split("\n")[0].strip()[:60]
            report: dict[str, Any] = {
                "benchmark": "api",
                "environment": common.environment(argv),
                "settings": {"workers": args.workers, "jobs": args.jobs, "events": seeded.events,
                             "statuses": seeded.statuses, "streams": args.streams, "concurrency": args.concurrency,
                             "duration": args.duration, "warmup": args.warmup, "rounds": args.rounds,
                             "list_limit": args.list_limit, "rate_limit": args.rate_limit, "driver": driver,
                             "wrk_version": wrk_version,
                             "sse_poll_seconds": args.sse_poll_seconds or default_sse_poll(),
                             "sse_fallback_poll_seconds": default_sse_poll("sse_fallback_poll_seconds"),
                             "http": http_implementation(),
                             "database": "postgresql", "broker": "redis", "tiny": args.tiny},
                "background": background,
                **result,
            }
            report["summary"] = summarise(report["runs"])
            report["targets"] = evaluate_targets(report)
            server_log = server.log_tail(20000)
            report["server_log_errors"] = [line for line in server_log.splitlines()
                                           if "Traceback" in line or "ERROR" in line][:20]
            server.stop()
            server = None
        out = Path(args.out)
        common.write_report(out, report, render(report, markdown=True))
        print()
        print(render(report, markdown=False))
        if args.keep_log:
            print(server_log)
        print(f"wrote {out} and {out.with_suffix('.md')}")
        return report
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
