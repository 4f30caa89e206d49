"""Where an API request's CPU goes: py-spy samples one uvicorn worker under wrk load on one endpoint.

    python -m benchmarks.api_profile                         # GET /v1/jobs/{id}, 15 s, PostgreSQL + Redis
    python -m benchmarks.api_profile --endpoint list --seconds 10

One worker (so every sample is the request path, not a sibling's), the same seeded database and server
environment as `benchmarks.api`, `--concurrency` wrk connections. py-spy samples only while a thread holds the GIL
(`--gil`), so the shares are of the CPU the Python process spends, idle waits excluded. Output: the share of samples
under each frame that matters for the read path (inclusive), grouped into the request's phases, and the hottest
frames by self time; JSON and Markdown under benchmarks/results/ (`api_profile.*`). Sampling slows the worker, so
req/s here is not comparable with `benchmarks.api`; the shares are the point.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import api, common

common.set_module_name("benchmarks.api_profile")

# Inclusive frames that split a request into its phases (matched against "function (file)").
PHASES = {
    "HTTP parsing and response writing (uvicorn)": [r"^HttpToolsProtocol\.", r"^RequestResponseCycle\.send "],
    "middleware stack (Starlette/FastAPI)": [r"^ServerErrorMiddleware\.__call__ "],
    "routing (route matching)": [r"\.matches \(fastapi/routing\.py\)$"],
    "dependencies (settings, API key, reads)": [r"^solve_dependencies "],
    "API key lookup (cache)": [r"^get_current_tenant ", r"^authenticate \(app/deps\.py\)$"],
    "thread hop to the read thread (event-loop side)": [
        r"^run_sync \(anyio/to_thread\.py\)$", r"^ReadThreads\.__call__ ", r"^_settle \(app/read_threads\.py\)$"],
    "the read in its thread (query + serialisation)": [r"^run_read \(app/reads\.py\)$"],
    "SQLAlchemy ORM (Session)": [r"^Session\.(get|execute|scalars) "],
    "SQLAlchemy Core execute": [r"^Connection\.execute \(sqlalchemy/engine/base\.py\)$"],
    "psycopg (driver)": [r"^Cursor\.execute \(psycopg/cursor\.py\)$", r"^Cursor\.fetch"],
    "pydantic (response model + JSON)": [r"^BaseModel\.model_dump_json ", r"\.of \(app/schemas\.py\)$",
                                         r"^BaseModel\.model_validate "],
}
_SITE = re.compile(r"/[^ ;()]*?/(site-packages|lib/python3\.\d+)/")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.api_profile", description=__doc__.split("\n")[0])
    parser.add_argument("--endpoint", choices=api.ENDPOINTS, default="job_status")
    parser.add_argument("--seconds", type=int, default=15, help="sampled seconds of load")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--pg-server", default=api.PG_SERVER)
    parser.add_argument("--redis-url", default=api.REDIS_URL)
    parser.add_argument("--rate-limit", default="1000000/second",
                        help="GKD_RATE_LIMIT of the server, as in benchmarks.api: a limit the load never reaches, so "
                        "every request is counted and none refused (the service's default would answer most with 429)")
    parser.add_argument("--top", type=int, default=25, help="frames listed by self time")
    parser.add_argument("--stacks", help="also keep py-spy's collapsed stacks here (input for flame graphs)")
    parser.add_argument("--out", default=str(common.RESULTS_DIR / "api_profile.json"))
    return parser.parse_args(argv)


def py_spy() -> str | None:
    """py-spy on PATH, else beside this interpreter (the venv's bin when it is not activated)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.is_file() else None)


def frame_name(frame: str) -> str:
    """'f (path/to/site-packages/pkg/mod.py:12)' -> 'f (pkg/mod.py)'."""
    frame = re.sub(r":\d+\)$", ")", frame)
    return _SITE.sub("", frame.replace(str(api.REPO) + "/", ""))


def aggregate(collapsed: str) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """Total samples, inclusive counts per frame (each frame once per stack) and self counts, from py-spy's raw
    (collapsed-stack) output."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or not stack:
            continue
        n = int(count)
        total += n
        frames = [frame_name(f) for f in stack.split(";")]
        for name in set(frames):
            inclusive[name] += n
        own[frames[-1]] += n
    return total, inclusive, own


def phase_shares(total: int, inclusive: collections.Counter[str]) -> dict[str, float]:
    shares = {}
    for phase, patterns in PHASES.items():
        matched = [name for name in inclusive if any(re.search(p, name) for p in patterns)]
        # Frames of one phase can nest (Cursor.execute under fetch...): take the largest, not the sum.
        shares[phase] = round(100 * max((inclusive[n] for n in matched), default=0) / max(total, 1), 1)
    return shares


async def _load_and_sample(args: argparse.Namespace, server: api.Server, seeded: api.Seeded, scratch: Path,
                           collapsed: Path) -> dict[str, Any]:
    script = api.wrk_script(api.endpoint_paths(args.endpoint, seeded, 20), seeded.key, scratch)
    load = argparse.Namespace(wrk_threads=1, concurrency=args.concurrency, request_timeout=10)
    await api.run_wrk(server.url, script, load, 3)  # warm-up: caches, prepared statements, pools
    pid = server.worker_pids()[0]
    before = server.cpu_seconds()
    spy = await asyncio.create_subprocess_exec(
        py_spy() or "py-spy", "record", "--pid", str(pid), "--duration", str(args.seconds), "--rate",
        str(args.rate), "--gil", "--format", "raw", "--output", str(collapsed),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    result = await api.run_wrk(server.url, script, load, args.seconds)
    cpu = server.cpu_seconds() - before
    _, err = await spy.communicate()
    if spy.returncode != 0 or not collapsed.exists():
        raise RuntimeError(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-1000:]}")
    if result.errors:
        # A profile of refusals (429) or failures is not a profile of the read path.
        raise RuntimeError(f"{result.errors} of {result.requests} requests failed while sampled: {result.error_detail}")
    return {"requests": result.requests, "rps_while_sampled": round(result.requests / result.seconds, 1),
            "server_cpu_ms_per_request_while_sampled": round(1000 * cpu / max(result.requests, 1), 3),
            "errors": result.errors}


def render(report: dict[str, Any]) -> str:
    lines = [f"# api profile: {report['settings']['path']}", "",
             f"- command: `{report['environment']['command']}`", f"- date (UTC): {report['environment']['date']}",
             f"- versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}",
             f"- {report['samples']} GIL-holding samples over {report['settings']['seconds']} s of wrk load "
             f"({report['settings']['concurrency']} connections, 1 uvicorn worker); "
             f"{report['load']['rps_while_sampled']} req/s while sampled", "",
             "| phase (inclusive share of the worker's CPU samples) | % |", "|---|---|"]
    lines += [f"| {phase} | {share} |" for phase, share in report["phases"].items()]
    lines += ["", "| hottest frames (self) | % |", "|---|---|"]
    lines += [f"| `{name}` | {share} |" for name, share in report["self"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    common.set_module_name("benchmarks.api_profile")
    args = parse_args(argv)
    if py_spy() is None:
        raise SystemExit("py-spy is not on PATH (it is in the dev extra: make install)")
    if not (api.reachable(5432) and api.reachable(6379)):
        raise SystemExit("PostgreSQL (5432) and Redis (6379) must listen on 127.0.0.1")
    scratch = Path(tempfile.mkdtemp(prefix="gkd-bench-profile-"))
    server: api.Server | None = None
    try:
        with api.fresh_database(args.pg_server) as url:
            seeded = api.seed(url, args.jobs, 0, 6)
            env = {**api.server_env(scratch / "home", url, args.redis_url), "GKD_RATE_LIMIT": args.rate_limit}
            server = api.Server(env, 1, scratch / "api.log")
            server.start()
            load = asyncio.run(_load_and_sample(args, server, seeded, scratch, scratch / "collapsed.txt"))
            server.stop()
            server = None
        collapsed = (scratch / "collapsed.txt").read_text(encoding="utf-8")
        if args.stacks:
            Path(args.stacks).write_text(collapsed, encoding="utf-8")
        total, inclusive, own = aggregate(collapsed)
        report: dict[str, Any] = {
            "benchmark": "api_profile",
            "environment": common.environment(argv),
            "versions": installed_versions(),
            "settings": {"endpoint": args.endpoint, "path": api_path(args.endpoint), "seconds": args.seconds,
                         "rate": args.rate, "concurrency": args.concurrency, "workers": 1,
                         "database": "postgresql", "broker": "redis"},
            "load": load,
            "samples": total,
            "phases": phase_shares(total, inclusive),
            "self": [(name, round(100 * n / max(total, 1), 1)) for name, n in own.most_common(args.top)],
        }
        out = Path(args.out)
        common.write_report(out, report, render(report))
        print(render(report) + f"\nwrote {out} and {out.with_suffix('.md')}")
        return report
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def api_path(endpoint: str) -> str:
    return {"job_status": "GET /v1/jobs/{id}", "list": "GET /v1/jobs?limit=20"}[endpoint]


def installed_versions() -> dict[str, str]:
    from importlib import metadata

    names = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "psycopg", "pydantic", "anyio")
    return {name: metadata.version(name) for name in names}


if __name__ == "__main__":
    main()
