"""The service's data for tests: API keys of fresh tenants and teachers registered for them (what `gkd keys
create` and `gkd models import --tenant` do), whether the machine's PostgreSQL and Redis are there, and the
few API calls many tests make (upload a dataset, submit a tiny job, follow or page through its events)."""

from __future__ import annotations

import io
import json
import secrets
import socket
import tarfile
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from app.store.db import session_scope
from app.store.keys import create_key, tenant_for_key
from app.store.settings import Settings
from tests.support.factories import csv_bytes, sentiment_rows

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
REDIS_URL = "redis://127.0.0.1:6379/0"

KeyOrHeaders = str | dict[str, str]


def reachable(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port`."""
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def new_key(settings: Settings, tenant: str | None = None) -> str:
    """A new API key of `tenant` (a fresh tenant by default): tests never see each other's rows."""
    with session_scope(settings.database_url) as session:
        plain, _ = create_key(session, tenant or f"t-{secrets.token_hex(6)}")
    return plain


def plain_key(key: KeyOrHeaders) -> str:
    """The key itself, given as the key or as the `Authorization: Bearer ...` headers that carry it."""
    return key if isinstance(key, str) else key["Authorization"].removeprefix("Bearer ")


def tenant_id_of(settings: Settings, key: KeyOrHeaders) -> str:
    with session_scope(settings.database_url) as session:
        tenant = tenant_for_key(session, plain_key(key))
        assert tenant is not None
        return tenant.id


def register_teacher(settings: Settings, key: KeyOrHeaders, path: Path, name: str = "tiny") -> str:
    """Register the model directory `path` as a teacher of the key's tenant; its id."""
    from app.registry import import_directory

    tenant_id = tenant_id_of(settings, key)
    with session_scope(settings.database_url) as session:
        return import_directory(session, path, name, tenant_id=tenant_id).id


# ---------------------------------------------------------------------------------------- through the API
def upload_dataset(client: TestClient, headers: dict[str, str], rows: list[dict[str, str]] | None = None,
                   name: str = "train.csv") -> dict[str, Any]:
    """POST /v1/datasets with `rows` (24 sentiment rows by default); the dataset."""
    body = csv_bytes(rows or sentiment_rows(24))
    response = client.post("/v1/datasets", headers=headers, files={"file": (name, body, "text/csv")})
    assert response.status_code == 201, response.text
    return dict(response.json())


def upload(client: TestClient, headers: dict[str, str], n: int) -> str:
    """The id of a new dataset of `n` sentiment rows."""
    return str(upload_dataset(client, headers, sentiment_rows(n))["id"])


def submit(client: TestClient, headers: dict[str, str], teacher: str, dataset: str,
           validation_dataset: str | None = None, **hyper: object) -> dict[str, Any]:
    """POST /v1/jobs: a tiny one-epoch gradient_kd job; the job."""
    body = {
        "teacher": teacher,
        "method": "gradient_kd",
        "student": {"num_layers": 1},
        "training_dataset": dataset,
        "validation_dataset": validation_dataset,
        "hyperparameters": {"epochs": 1, "batch_size": 8, "max_length": 16, **hyper},
    }
    response = client.post("/v1/jobs", headers=headers, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def follow(client: TestClient, headers: dict[str, str], job_id: str, timeout: float = 150.0) -> list[dict[str, Any]]:
    """Read the job's SSE stream to its end; returns the events."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    with client.stream("GET", f"/v1/jobs/{job_id}/events/stream", headers=headers, timeout=timeout) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        current: dict[str, str] = {}
        for line in response.iter_lines():
            assert time.monotonic() < deadline, "stream did not end"
            if line.startswith("id: "):
                current["id"] = line[4:]
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                assert str(event["seq"]) == current.get("id")
                events.append(event)
    return events


def job_of(client: TestClient, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/jobs/{job_id}", headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def all_events(client: TestClient, headers: dict[str, str], job_id: str) -> list[dict[str, Any]]:
    """Every event of the job, page after page."""
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        page = client.get(f"/v1/jobs/{job_id}/events?after={after}&limit=1000", headers=headers).json()
        events.extend(page["data"])
        if not page["has_more"]:
            return events
        after = events[-1]["seq"]


def final_tensors(client: TestClient, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    """The tensors of the job's `final` checkpoint, downloaded through the API (to compare runs bit for bit)."""
    from safetensors.torch import load

    checkpoints = {c["kind"]: c for c in client.get(f"/v1/jobs/{job_id}/checkpoints", headers=headers).json()["data"]}
    content = client.get(f"/v1/jobs/{job_id}/checkpoints/{checkpoints['final']['id']}/content", headers=headers)
    assert content.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(content.content), mode="r:gz") as archive:
        member = archive.extractfile("model.safetensors")
        assert member is not None
        return dict(load(member.read()))
