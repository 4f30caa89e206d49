"""Server CPU per request of two checkouts of the service, measured side by side (interleaved) on one database.

    git worktree add --detach /tmp/api_base <commit>
    python -m benchmarks.api_ab --base /tmp/api_base                 # job read and list, 6 rounds of 3 s each
    python -m benchmarks.api_ab --base /tmp/api_base --streams 100   # also: the time to open 100 SSE streams

On a busy machine req/s and even CPU per request drift by tens of percent from one minute to the next, so a
before/after made minutes apart says little. Here both checkouts serve at once (one uvicorn worker each, the same
environment as `benchmarks.api`, PostgreSQL + Redis, the same seeded database) and the runs alternate A, B, B, A...
endpoint by endpoint, so both see the same background load. The figure compared is each worker's CPU time (user +
system, /proc) over a wrk run divided by its requests; medians over rounds. Nothing is written under
benchmarks/results unless `--out` says so.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import api, common

common.set_module_name("benchmarks.api_ab")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.api_ab", description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the other checkout (e.g. a git worktree at the base commit)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=3, help="measured seconds per run (after 1 s of warm-up)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--streams", type=int, default=0,
                        help="SSE streams to open per checkout and round (0: none); their opening time is reported")
    parser.add_argument("--list-limit", type=int, default=20)
    parser.add_argument("--rate-limit", default="1000000/second", help="GKD_RATE_LIMIT of both servers")
    parser.add_argument("--pg-server", default=api.PG_SERVER)
    parser.add_argument("--redis-url", default=api.REDIS_URL)
    parser.add_argument("--out", help="also write the report here (JSON, and Markdown beside it)")
    args = parser.parse_args(argv)
    if args.streams > args.jobs:
        parser.error("--streams cannot exceed --jobs")
    return args


async def _measure(server: api.Server, script: Path, args: argparse.Namespace) -> dict[str, float]:
    load = argparse.Namespace(wrk_threads=1, concurrency=args.concurrency, request_timeout=10)
    await api.run_wrk(server.url, script, load, 1)
    cpu0 = server.cpu_seconds()
    result = await api.run_wrk(server.url, script, load, args.seconds)
    cpu = server.cpu_seconds() - cpu0
    if result.errors or not result.requests:
        raise RuntimeError(f"{result.errors} errors of {result.requests} requests: {result.error_detail}")
    return {"cpu_ms_per_request": 1000 * cpu / result.requests, "rps": result.rps}


async def _open_streams(server: api.Server, seeded: api.Seeded, count: int) -> float:
    streams = api.Streams(server.url, seeded.key, seeded.running_ids[:count])
    try:
        seconds = await streams.open()
        if streams.open_count < count:
            raise RuntimeError(f"{streams.open_count}/{count} streams opened: {streams.failures[:3]}")
        return seconds
    finally:
        await streams.close()


async def _rounds(args: argparse.Namespace, servers: dict[str, api.Server], seeded: api.Seeded,
                  scratch: Path) -> list[dict[str, Any]]:
    scripts = {name: api.wrk_script(api.endpoint_paths(name, seeded, args.list_limit), seeded.key, scratch)
               for name in api.ENDPOINTS}
    runs: list[dict[str, Any]] = []
    sides = list(servers)
    for index in range(args.rounds):
        order = sides if index % 2 == 0 else sides[::-1]
        for endpoint, script in scripts.items():
            for side in order:
                run = await _measure(servers[side], script, args)
                runs.append({"round": index + 1, "side": side, "endpoint": endpoint, **run})
                print(f"  round {index + 1} {endpoint:<10} {side:<4} {run['cpu_ms_per_request']:.3f} ms CPU/req "
                      f"{run['rps']:7.0f} req/s", flush=True)
        if args.streams:
            for side in order:
                seconds = await _open_streams(servers[side], seeded, args.streams)
                runs.append({"round": index + 1, "side": side, "endpoint": "sse_open", "seconds": seconds})
                print(f"  round {index + 1} sse_open   {side:<4} {seconds:.3f} s for {args.streams}", flush=True)
                await asyncio.sleep(1.0)  # the closed streams give their slots back
    return runs


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for endpoint in (*api.ENDPOINTS, "sse_open"):
        row: dict[str, Any] = {"endpoint": endpoint}
        for side in ("base", "new"):
            mine = [r for r in runs if r["endpoint"] == endpoint and r["side"] == side]
            if not mine:
                continue
            key = "seconds" if endpoint == "sse_open" else "cpu_ms_per_request"
            row[side] = round(common.median([r[key] for r in mine]), 3)
            row[f"{side}_runs"] = [round(r[key], 3) for r in mine]
        if "base" in row and "new" in row:
            row["change_percent"] = round(100 * (row["new"] / row["base"] - 1), 1)
            rows.append(row)
    return rows


def render(report: dict[str, Any]) -> str:
    lines = [f"# api A/B: {report['settings']['base']} (base) against this checkout (new)", "",
             f"- command: `{report['environment']['command']}`", f"- date (UTC): {report['environment']['date']}",
             f"- background load: {report['background']}", "",
             "| endpoint | base | new | change | base runs | new runs |", "|---|---|---|---|---|---|"]
    for row in report["summary"]:
        unit = "s to open" if row["endpoint"] == "sse_open" else "ms CPU/req"
        lines.append(f"| {row['endpoint']} ({unit}) | {row['base']} | {row['new']} | {row['change_percent']:+.1f} % "
                     f"| {row['base_runs']} | {row['new_runs']} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    common.set_module_name("benchmarks.api_ab")
    args = parse_args(argv)
    base = Path(args.base).resolve()
    if not (base / "app" / "main.py").is_file():
        raise SystemExit(f"{base} is not a checkout of this project")
    if not (api.reachable(5432) and api.reachable(6379)):
        raise SystemExit("PostgreSQL (5432) and Redis (6379) must listen on 127.0.0.1")
    scratch = Path(tempfile.mkdtemp(prefix="gkd-bench-ab-"))
    servers: dict[str, api.Server] = {}
    try:
        with api.fresh_database(args.pg_server) as url:
            seeded = api.seed(url, args.jobs, args.streams, 6)
            for side, root in (("base", base), ("new", api.REPO)):
                env = {**api.server_env(scratch / side, url, args.redis_url), "GKD_RATE_LIMIT": args.rate_limit,
                       "PYTHONPATH": str(root), "GKD_SSE_STREAMS_PER_TENANT": str(2 * args.streams + 10)}
                servers[side] = api.Server(env, 1, scratch / f"{side}.log", root=root)
                servers[side].start()
            background = common.background_load()
            start = time.perf_counter()
            runs = asyncio.run(_rounds(args, servers, seeded, scratch))
            elapsed = time.perf_counter() - start
        report: dict[str, Any] = {
            "benchmark": "api_ab", "environment": common.environment(argv), "background": background,
            "settings": {"base": str(base), "rounds": args.rounds, "seconds": args.seconds,
                         "concurrency": args.concurrency, "streams": args.streams, "workers": 1,
                         "elapsed_seconds": round(elapsed, 1)},
            "runs": runs, "summary": summarise(runs),
        }
        text = render(report)
        if args.out:
            common.write_report(Path(args.out), report, text)
        print("\n" + text)
        return report
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
