"""Long-running chaos checks, too slow for `make test` (its 200-example schemathesis run is
tests/chaos/test_schema_budget.py). Prints what it tried and what survived.

    .venv/bin/python -m tests.chaos.fuzz_api [--examples 500] [--kills 5]

1. schemathesis with a large example budget against a live uvicorn process (PostgreSQL at 127.0.0.1:5432),
   zero 5xx / schema violations expected (the bounded version is tests/reliability/test_schema.py);
2. a kill loop: a job whose worker is SIGKILLed `--kills` times at random steps, with GKD_MAX_ATTEMPTS above
   that, must still end `succeeded` with bit-identical final weights to an uninterrupted run.
"""

from __future__ import annotations

import argparse
import random
import secrets
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text


def _database() -> tuple[str, object]:
    from tests.support.service import PG_SERVER

    name = f"gkd_chaos_{secrets.token_hex(4)}"
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return f"{PG_SERVER}/{name}", (admin, name)


def _drop(handle: object) -> None:
    admin, name = handle  # type: ignore[misc]
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def fuzz(url: str, home: Path, examples: int) -> bool:
    from app.store.settings import Settings
    from tests.reliability.test_schema import fuzz as run
    from tests.support.servers import Server
    from tests.support.service import new_key

    settings = Settings(home=home / "fuzz", database_url=url, broker_url="memory://", migrate_on_start=False)
    settings.ensure_dirs()
    server = Server(settings, home / "fuzz-api.log").start()
    try:
        started = time.monotonic()
        operations, failures = run(server.url, new_key(settings), examples)
        print(f"[fuzz] {operations} operations x {examples} examples in {time.monotonic() - started:.0f}s: "
              f"{len(failures)} failing operations")
        for label, message in failures.items():
            print(f"[fuzz] FAIL {label}: {message[:500]}")
        return not failures
    finally:
        server.stop()


def kill_loop(url: str, home: Path, kills: int) -> bool:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.store.settings import Settings
    from tests.reliability.conftest import WORKER_ENV, RedisServer, Stack, TcpProxy, worker_pid
    from tests.reliability.test_worker_crash import final_tensors
    from tests.support.factories import make_tiny_teacher
    from tests.support.servers import wait_for
    from tests.support.service import job_of, new_key, register_teacher, submit, upload

    WORKER_ENV["GKD_MAX_ATTEMPTS"] = str(kills + 2)
    redis = RedisServer(home / "redis").start()
    proxy = TcpProxy()
    settings = Settings(home=home / "kill", database_url=url, broker_url=redis.url, migrate_on_start=False,
                        task_queue=f"chaos-{secrets.token_hex(3)}", enqueue_timeout_seconds=0.5)
    settings.ensure_dirs()
    stack = Stack(settings, proxy, redis, home)
    stack.start_worker()
    try:
        with TestClient(create_app(settings)) as api:
            headers = {"Authorization": f"Bearer {new_key(settings)}"}
            teacher = register_teacher(settings, headers, make_tiny_teacher(home / "teacher"))
            dataset = upload(api, headers, 48)
            hyper = {"epochs": 12, "seed": 7}
            reference = submit(api, headers, teacher, dataset, **hyper)["id"]
            wait_for(lambda: job_of(api, headers, reference)["status"] == "succeeded", 300, "reference")
            victim = submit(api, headers, teacher, dataset, **hyper)["id"]
            rng = random.Random(0)
            for n in range(kills):
                target = rng.randint(2, 60)
                job = wait_for(lambda t=target: (j := job_of(api, headers, victim))["status"] != "queued"
                               and (j["progress"].get("step", 0) >= t or j["status"] != "running") and j, 300,
                               "progress")
                if job["status"] != "running":
                    break
                stack.kill(worker_pid(settings, victim))
                print(f"[kill] #{n + 1}: SIGKILL at step >= {job['progress']['step']} (attempt {job['attempts']})")
                stack.start_worker()
            done = wait_for(lambda: (j := job_of(api, headers, victim))["status"] in ("succeeded", "failed")
                            and j, 300, "the victim")
            import torch

            ours, theirs = final_tensors(api, headers, victim), final_tensors(api, headers, reference)
            same = all(torch.equal(ours[k], theirs[k]) for k in ours) and ours.keys() == theirs.keys()
            print(f"[kill] job {done['status']} after {done['attempts']} attempts; final weights "
                  f"{'identical' if same else 'DIFFERENT'} to the uninterrupted run")
            return done["status"] == "succeeded" and same
    finally:
        stack.stop()
        proxy.close()
        redis.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--kills", type=int, default=5)
    args = parser.parse_args()
    url, handle = _database()
    from app.store.db import upgrade

    upgrade(url)
    try:
        with tempfile.TemporaryDirectory(prefix="gkd-chaos-") as tmp:
            ok_fuzz = fuzz(url, Path(tmp), args.examples)
            ok_kill = kill_loop(url, Path(tmp), args.kills)
    finally:
        from app.store.db import engine_for

        engine_for(url).dispose()
        _drop(handle)
    print(f"[summary] fuzz {'survived' if ok_fuzz else 'FAILED'}; kill loop {'survived' if ok_kill else 'FAILED'}")
    return 0 if ok_fuzz and ok_kill else 1


if __name__ == "__main__":
    sys.exit(main())
