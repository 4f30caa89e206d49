"""Webhook endpoints through the API (SQLite and PostgreSQL): the secret shown once and kept encrypted, URLs that
may not be targets refused with 422 and nothing stored, the per-tenant quota, tenants kept apart, and the outbox:
a job's status changes made by the API queue deliveries to the endpoints that asked for them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.main import create_app
from app.store.db import session_scope
from app.store.orm import Webhook, WebhookDelivery
from app.store.settings import Settings
from app.store.webhook_secrets import unseal
from tests.service.test_api_basics import assert_error
from tests.support.service import new_key, register_teacher, upload_dataset

PUBLIC_URL = "http://93.184.215.14/hooks"  # a public address literal: no DNS needed


@pytest.fixture
def open_settings(settings: Settings) -> Settings:
    """The deployment of the tests' loopback receivers: private targets allowed, two endpoints per tenant."""
    return settings.model_copy(update={"webhook_allow_private": True, "quota_webhooks": 2})


@pytest.fixture
def open_client(open_settings: Settings) -> TestClient:
    with TestClient(create_app(open_settings), raise_server_exceptions=False) as test_client:
        yield test_client


def _create(client: TestClient, auth: dict, url: str = PUBLIC_URL, types: list[str] | None = None):
    return client.post("/v1/webhooks", headers=auth,
                       json={"url": url, "event_types": types or ["job.succeeded"], "description": "ci"})


def _count(settings: Settings, model: type) -> int:
    with session_scope(settings.database_url) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_create_shows_the_secret_once_and_stores_it_encrypted(client: TestClient, auth: dict,
                                                              settings: Settings) -> None:
    created = _create(client, auth)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["secret"].startswith("whsec_") and body["object"] == "webhook"
    assert body["url"] == PUBLIC_URL and body["event_types"] == ["job.succeeded"]
    got = client.get(f"/v1/webhooks/{body['id']}", headers=auth).json()
    listed = client.get("/v1/webhooks", headers=auth).json()
    assert "secret" not in got and [w["id"] for w in listed["data"]] == [body["id"]]
    assert all("secret" not in w for w in listed["data"])
    with session_scope(settings.database_url) as session:
        stored = session.get(Webhook, body["id"])
        assert stored is not None
        assert body["secret"] not in stored.secret  # a copy of the database alone does not give it away
        assert unseal(settings, stored.secret) == body["secret"]


@pytest.mark.parametrize(("url", "why"), [
    ("ftp://93.184.215.14/x", "http"),
    ("javascript:alert(1)", "http"),
    ("http:///nohost", "host"),
    ("http://user:pw@93.184.215.14/", "credentials"),
    ("http://93.184.215.14/" + "a" * 2100, "2048"),
    ("http://93.184.215.14/a b", "spaces"),
    ("http://127.0.0.1:9/hook", "non-public"),
    ("http://localhost/hook", "non-public"),
    ("http://10.1.2.3/hook", "non-public"),
    ("http://192.168.0.1/hook", "non-public"),
    ("http://169.254.169.254/latest/meta-data", "non-public"),
    ("http://100.64.0.1/", "non-public"),
    ("http://[::1]/hook", "non-public"),
    ("http://[::ffff:127.0.0.1]/hook", "non-public"),
    ("http://0.0.0.0/hook", "non-public"),
    ("https://no-such-host.invalid/hook", "resolve"),
    ("http://[::1/hook", "malformed"),
    ("http://93.184.215.14:99999/hook", "malformed"),
    ("http://" + "a" * 70 + ".example/hook", "resolve"),  # a DNS label over 63 characters
    ("http://93.184.215.14/#frag", "fragment"),
])
def test_urls_that_may_not_be_targets_get_422(client: TestClient, auth: dict, settings: Settings, url: str,
                                              why: str) -> None:
    error = assert_error(_create(client, auth, url), 422, "invalid_request_error", "url")
    assert why in error["message"], error
    assert client.get("/v1/webhooks", headers=auth).json()["data"] == []  # nothing stored


@pytest.mark.parametrize("body", [
    {"url": PUBLIC_URL, "event_types": []},
    {"url": PUBLIC_URL, "event_types": ["job.exploded"]},
    {"url": PUBLIC_URL, "event_types": ["job.failed", "job.failed"]},
    {"url": PUBLIC_URL},
    {"url": PUBLIC_URL, "event_types": ["job.failed"], "secret": "mine"},
    {"url": 5, "event_types": ["job.failed"]},
    {"url": "http://93.184.215.14/\u0000", "event_types": ["job.failed"]},
    {"url": "http://93.184.215.14/\ud800", "event_types": ["job.failed"]},
    {"url": PUBLIC_URL, "event_types": ["job.failed"], "description": "x" * 301},
])
def test_bad_bodies_get_422(client: TestClient, auth: dict, body: dict) -> None:
    raw = json.dumps(body)  # ASCII with escapes: a lone surrogate travels as the JSON text \\ud800
    response = client.post("/v1/webhooks", headers={**auth, "content-type": "application/json"}, content=raw)
    assert_error(response, 422, "invalid_request_error")
    assert client.get("/v1/webhooks", headers=auth).json()["data"] == []


def test_loopback_allowed_when_the_operator_allows_it(open_client: TestClient, open_settings: Settings) -> None:
    auth = {"Authorization": f"Bearer {new_key(open_settings)}"}
    assert _create(open_client, auth, "http://127.0.0.1:9/hook").status_code == 201
    # still only http(s), still no credentials
    assert_error(_create(open_client, auth, "file:///etc/passwd"), 422, "invalid_request_error", "url")


def test_quota_bounds_the_endpoints_of_a_tenant(open_client: TestClient, open_settings: Settings) -> None:
    auth = {"Authorization": f"Bearer {new_key(open_settings)}"}
    other = {"Authorization": f"Bearer {new_key(open_settings)}"}
    first = _create(open_client, auth).json()
    assert _create(open_client, auth).status_code == 201
    error = assert_error(_create(open_client, auth), 429, "rate_limit_error", "webhooks")
    assert error["code"] == "quota_exceeded"
    assert _create(open_client, other).status_code == 201  # another tenant's count is its own
    assert open_client.delete(f"/v1/webhooks/{first['id']}", headers=auth).status_code == 200
    assert _create(open_client, auth).status_code == 201


def test_list_pages_and_tenants_are_apart(open_client: TestClient, open_settings: Settings) -> None:
    auth = {"Authorization": f"Bearer {new_key(open_settings)}"}
    other = {"Authorization": f"Bearer {new_key(open_settings)}"}
    ids = [_create(open_client, auth).json()["id"] for _ in range(2)]
    page = open_client.get("/v1/webhooks?limit=1", headers=auth).json()
    assert page["has_more"] and page["data"][0]["id"] == ids[1]
    rest = open_client.get(f"/v1/webhooks?limit=1&after={page['next_cursor']}", headers=auth).json()
    assert [w["id"] for w in rest["data"]] == [ids[0]] and not rest["has_more"]
    for path in (f"/v1/webhooks/{ids[0]}", f"/v1/webhooks/{ids[0]}/deliveries"):
        assert_error(open_client.get(path, headers=other), 404, "not_found_error")
    assert_error(open_client.delete(f"/v1/webhooks/{ids[0]}", headers=other), 404, "not_found_error")
    assert open_client.get("/v1/webhooks", headers=other).json()["data"] == []
    assert_error(open_client.get("/v1/webhooks?after=nope", headers=auth), 422, "invalid_request_error", "after")


def test_status_changes_in_the_api_queue_deliveries(client: TestClient, auth: dict, settings: Settings,
                                                    tiny_teacher: Path) -> None:
    finished = _create(client, auth, types=["job.queued", "job.cancelled"]).json()
    other_types = _create(client, auth, types=["job.succeeded"]).json()
    teacher = register_teacher(settings, auth, tiny_teacher)
    dataset = upload_dataset(client, auth)["id"]
    job = client.post("/v1/jobs", headers=auth, json={"teacher": teacher, "training_dataset": dataset,
                                                      "student": {"num_layers": 1}}).json()
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).status_code == 200
    log = client.get(f"/v1/webhooks/{finished['id']}/deliveries", headers=auth).json()
    assert [d["event_type"] for d in log["data"]] == ["job.cancelled", "job.queued"]  # newest first
    for delivery in log["data"]:
        assert delivery["status"] == "pending" and delivery["attempts"] == 0
        assert delivery["payload"]["type"] == delivery["event_type"]
        assert delivery["payload"]["data"]["job_id"] == job["id"]
    assert client.get(f"/v1/webhooks/{other_types['id']}/deliveries", headers=auth).json()["data"] == []
    # deleting the endpoint takes its deliveries: nothing more is sent to it
    assert client.delete(f"/v1/webhooks/{finished['id']}", headers=auth).json()["deleted"] is True
    with session_scope(settings.database_url) as session:
        left = session.scalar(select(func.count()).select_from(WebhookDelivery)
                              .where(WebhookDelivery.webhook_id == finished["id"]))
    assert left == 0
