"""Health, the error envelope on every kind of error, and authentication."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.main import create_app
from app.store.db import session_scope
from app.store.keys import revoke_key
from app.store.settings import Settings


def assert_error(response, status: int, type_: str, param: str | None = "ANY") -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"type", "code", "message", "param"}
    assert error["type"] == type_
    assert error["message"]
    if param != "ANY":
        assert error["param"] == param, error
    return error


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["database"] == "ok"


def test_ready_reports_unreachable_broker(settings: Settings) -> None:
    settings.broker_url = "redis://127.0.0.1:1/0"
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        error = assert_error(client.get("/readyz"), 503, "server_error")
        assert "broker" in error["message"]


def test_unknown_route_and_method_use_the_envelope(client: TestClient, auth: dict) -> None:
    assert_error(client.get("/v1/nothing-here", headers=auth), 404, "not_found_error")
    assert_error(client.delete("/v1/jobs", headers=auth), 405, "invalid_request_error")


def test_validation_error_names_the_query_field(client: TestClient, auth: dict) -> None:
    error = assert_error(client.get("/v1/jobs?limit=0", headers=auth), 422, "invalid_request_error", "limit")
    assert "limit" in error["message"]


def test_authentication(settings: Settings, auth: dict) -> None:
    settings.api_key_cache_seconds = 0  # no key cache: a revoked key is refused on the very next request
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        missing = client.get("/v1/datasets")
        assert_error(missing, 401, "authentication_error")
        # The message says where a key comes from: the variable and flag the client and CLI read, the local file.
        assert all(hint in missing.json()["error"]["message"]
                   for hint in ("GKD_API_KEY", "--api-key", "var/local_api_key"))
        assert_error(client.get("/v1/datasets", headers={"Authorization": "Bearer gkd_wrong"}), 401,
                     "authentication_error")
        assert_error(client.get("/v1/datasets", headers={"Authorization": "Basic abc"}), 401,
                     "authentication_error")
        assert client.get("/v1/datasets", headers=auth).status_code == 200
        with session_scope(settings.database_url) as session:
            assert revoke_key(session, auth["Authorization"].removeprefix("Bearer "))
        assert_error(client.get("/v1/datasets", headers=auth), 401, "authentication_error")


def test_polled_reads_refuse_keys_like_every_route(settings: Settings, auth: dict) -> None:
    """The job read checks its key itself (app.deps.authenticate, not the CurrentTenant dependency), the list and
    the stream through the dependency: each refusal is the same answer as any other route's, and the list still
    checks the key before its page parameters."""
    settings.api_key_cache_seconds = 0
    job = f"/v1/jobs/job_{'0' * 26}"
    polled = (job, "/v1/jobs", "/v1/jobs?limit=0", f"{job}/events/stream")

    def answers(headers: dict[str, str]) -> list[tuple[int, dict, str | None]]:
        replies = [client.get(path, headers=headers) for path in ("/v1/datasets", *polled)]
        return [(r.status_code, r.json(), r.headers.get("WWW-Authenticate")) for r in replies]

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for headers, code in (({}, "missing_api_key"), ({"Authorization": "Bearer gkd_wrong"}, "invalid_api_key"),
                              ({"Authorization": "Basic abc"}, None)):
            replies = answers(headers)
            assert all(reply == replies[0] for reply in replies), replies
            assert replies[0][0] == 401 and replies[0][2] == "Bearer"
            assert replies[0][1]["error"]["type"] == "authentication_error"
            if code is not None:
                assert replies[0][1]["error"]["code"] == code
        assert_error(client.get(job, headers=auth), 404, "not_found_error")
        assert_error(client.get("/v1/jobs?limit=0", headers=auth), 422, "invalid_request_error", "limit")
        with session_scope(settings.database_url) as session:
            assert revoke_key(session, auth["Authorization"].removeprefix("Bearer "))
        replies = answers(auth)
        assert all(reply == replies[0] for reply in replies) and replies[0][0] == 401, replies


def test_revoked_key_is_refused_once_the_key_cache_expires(settings: Settings, auth: dict) -> None:
    import time

    settings.api_key_cache_seconds = 0.5
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/v1/datasets", headers=auth).status_code == 200  # now remembered
        with session_scope(settings.database_url) as session:
            assert revoke_key(session, auth["Authorization"].removeprefix("Bearer "))
        time.sleep(settings.api_key_cache_seconds)
        assert_error(client.get("/v1/datasets", headers=auth), 401, "authentication_error")
        # A wrong key is never remembered, valid or not before.
        assert_error(client.get("/v1/datasets", headers={"Authorization": "Bearer gkd_wrong"}), 401,
                     "authentication_error")


def test_unexpected_errors_use_the_envelope(settings: Settings) -> None:
    app = create_app(settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as client:
        error = assert_error(client.get("/boom"), 500, "server_error")
        assert "secret" not in error["message"]


def test_api_start_up_does_not_import_torch(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, tempfile\n"
        "from fastapi.testclient import TestClient\n"
        "from app.main import create_app\n"
        "from app.store.settings import Settings\n"
        "with TestClient(create_app(Settings(home=tempfile.mkdtemp(), broker_url='memory://'))) as c:\n"
        "    assert c.get('/readyz').status_code == 200\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
