"""Shared capacity: per-key rate limits on every route (in process on the embedded default, in Redis shared by API
processes), the cap on a tenant's open event streams, and who may read /metrics (and its per-tenant figures)."""

from __future__ import annotations

import secrets
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.main import create_app
from app.store.db import session_scope
from app.store.orm import Job, utcnow
from app.store.settings import Settings
from app.streams import RedisStreamSlots
from tests.service.test_api_basics import assert_error
from tests.support.servers import Server, wait_for
from tests.support.service import REDIS_URL, new_key, reachable, register_teacher, upload_dataset


def app_settings(tmp_path: Path, db_url: str, **values: object) -> Settings:
    return Settings(home=tmp_path / "home", database_url=db_url, broker_url="memory://", migrate_on_start=False,
                    task_queue=f"test-{secrets.token_hex(4)}", **values)


def needs_redis() -> None:
    if not reachable(6379):
        pytest.skip("no Redis on 127.0.0.1:6379")


# ------------------------------------------------------------------------------------------------ rate limits


def test_rate_limit_per_key_in_process(sqlite_url: str, tmp_path: Path) -> None:
    settings = app_settings(tmp_path, sqlite_url, rate_limit="3/minute")
    auth = {"Authorization": f"Bearer {new_key(settings)}"}
    other = {"Authorization": f"Bearer {new_key(settings)}"}
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert [client.get("/v1/jobs", headers=auth).status_code for _ in range(3)] == [200, 200, 200]
        refused = client.get("/v1/datasets", headers=auth)  # every route counts against the key
        error = assert_error(refused, 429, "rate_limit_error", param=None)
        assert error["code"] == "rate_limited" and "3 per 1 minute" in error["message"]
        # a sliding window: 3 hits in this minute weigh on the next one until a third of it has passed
        assert 1 <= int(refused.headers["Retry-After"]) <= 60 + 20
        assert client.post("/v1/jobs", headers=auth, json={}).status_code == 429  # before validation
        assert client.get("/v1/jobs", headers=other).status_code == 200  # another key has its own count
        assert all(client.get("/healthz").status_code == 200 for _ in range(5))  # probes are not counted
        anonymous = [client.get("/v1/jobs").status_code for _ in range(4)]  # no key: counted per address
        assert anonymous == [401, 401, 401, 429]


def test_rate_limit_in_redis_is_shared_by_api_processes(sqlite_url: str, tmp_path: Path) -> None:
    needs_redis()
    settings = app_settings(tmp_path, sqlite_url, rate_limit="4/minute", rate_limit_storage=REDIS_URL)
    auth = {"Authorization": f"Bearer {new_key(settings)}"}
    with TestClient(create_app(settings), raise_server_exceptions=False) as one, \
            TestClient(create_app(settings), raise_server_exceptions=False) as two:
        codes = [client.get("/v1/jobs", headers=auth).status_code for client in (one, two, one, two, one, two)]
    assert codes == [200, 200, 200, 200, 429, 429]


def test_an_unreachable_counter_store_lets_requests_through(sqlite_url: str, tmp_path: Path) -> None:
    settings = app_settings(tmp_path, sqlite_url, rate_limit="1/minute", rate_limit_storage="redis://127.0.0.1:9/0")
    auth = {"Authorization": f"Bearer {new_key(settings)}"}
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert [client.get("/v1/jobs", headers=auth).status_code for _ in range(3)] == [200, 200, 200]


def test_no_rate_limit_when_unset(sqlite_url: str, tmp_path: Path) -> None:
    settings = app_settings(tmp_path, sqlite_url, rate_limit="")
    auth = {"Authorization": f"Bearer {new_key(settings)}"}
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert all(client.get("/v1/jobs", headers=auth).status_code == 200 for _ in range(20))


# ------------------------------------------------------------------------------------------------ streams


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_open_streams_per_tenant_are_capped(backend: str, request: pytest.FixtureRequest, tmp_path: Path,
                                            tiny_teacher: Path) -> None:
    """A real uvicorn process (a client's disconnect reaches the app as it does in production)."""
    db_url = request.getfixturevalue(f"{backend}_url")
    settings = app_settings(tmp_path, db_url)
    settings.ensure_dirs()
    auth = {"Authorization": f"Bearer {new_key(settings)}"}
    other = {"Authorization": f"Bearer {new_key(settings)}"}
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        teacher = register_teacher(settings, auth, tiny_teacher)
        dataset = upload_dataset(client, auth)["id"]
        body = {"teacher": teacher, "training_dataset": dataset, "student": {"num_layers": 1}}
        job = client.post("/v1/jobs", headers=auth, json=body).json()["id"]
    # Held by a worker whose heartbeat is fresh for an hour: no sweeper (other tests' workers share the PostgreSQL
    # database) re-enqueues it, so its stream stays open while the test needs it.
    with session_scope(settings.database_url) as session:
        session.execute(update(Job).where(Job.id == job).values(
            status="running", worker="elsewhere", attempts=1, heartbeat_at=utcnow() + timedelta(hours=1)))
    server = Server(settings, tmp_path / "api.log", GKD_SSE_STREAMS_PER_TENANT="1", GKD_SSE_KEEPALIVE_SECONDS="0.2",
                    GKD_SSE_POLL_SECONDS="0.05").start()
    try:
        url = f"{server.url}/v1/jobs/{job}/events/stream"
        with httpx.Client(timeout=30) as http:
            with http.stream("GET", url, headers=auth) as first:
                assert first.status_code == 200
                lines = first.iter_lines()  # held: a dropped iterator would close the connection
                next(lines)
                refused = http.get(url, headers=auth)
                error = assert_error(refused, 429, "rate_limit_error", param=None)
                assert error["code"] == "too_many_streams" and refused.headers["Retry-After"] == "5"
                assert http.get(f"{server.url}/v1/jobs/{job}/events", headers=auth).status_code == 200
                missing = f"{server.url}/v1/jobs/job_{'0' * 26}/events/stream"
                assert http.get(missing, headers=other).status_code == 404  # another tenant: its own count

            def reopened() -> bool:  # the slot comes back once the server sees the disconnect
                with http.stream("GET", url, headers=auth) as again:
                    return again.status_code == 200

            wait_for(reopened, 30, "the slot of the closed stream to come back", interval=0.2)
    finally:
        server.stop()


def test_redis_stream_slots_are_shared_and_expire() -> None:
    needs_redis()
    tenant = f"ten_{secrets.token_hex(6)}"
    one, two = RedisStreamSlots(2, REDIS_URL), RedisStreamSlots(2, REDIS_URL)  # two API processes
    first, second = one.acquire(tenant), two.acquire(tenant)
    assert first and second and one.acquire(tenant) is None and two.acquire(tenant) is None
    two.release(tenant, second)
    third = one.acquire(tenant)
    assert third is not None
    # A slot of a process that died is not renewed: once its score is past, it no longer counts.
    one._redis().zadd(f"gkd:streams:{tenant}", {first: time.time() - 1})
    assert two.acquire(tenant) is not None
    assert RedisStreamSlots(1, "redis://127.0.0.1:9/0").acquire(tenant)  # Redis down: let through


# ------------------------------------------------------------------------------------------------ /metrics


def test_metrics_open_shows_no_tenant_figures(sqlite_url: str, tmp_path: Path) -> None:
    with TestClient(create_app(app_settings(tmp_path, sqlite_url)), raise_server_exceptions=False) as client:
        page = client.get("/metrics")
        assert page.status_code == 200 and "gkd_jobs{" in page.text and "tenant" not in page.text


def test_metrics_behind_a_token(sqlite_url: str, tmp_path: Path) -> None:
    settings = app_settings(tmp_path, sqlite_url, metrics_token="s3cret-token")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert_error(client.get("/metrics"), 401, "authentication_error", param=None)
        assert_error(client.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401, "authentication_error",
                     param=None)
        page = client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
        assert page.status_code == 200 and "gkd_tenant_jobs_unfinished" in page.text


def test_metrics_bound_to_operator_addresses(sqlite_url: str, tmp_path: Path) -> None:
    settings = app_settings(tmp_path, sqlite_url, metrics_allow="10.0.0.0/8")
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False, client=("192.168.1.5", 4000)) as outsider:
        assert_error(outsider.get("/metrics"), 403, "permission_error", param=None)
    with TestClient(app, raise_server_exceptions=False, client=("10.2.3.4", 4000)) as operator:
        page = operator.get("/metrics")
        assert page.status_code == 200 and "gkd_tenant_jobs_unfinished" in page.text
