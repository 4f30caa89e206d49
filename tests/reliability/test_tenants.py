"""Promise 8: tenants. Every route with an id in its path, found from the app's routes (so new endpoints are
covered automatically), answers 404 to another tenant's key for ids it does not own, exactly as for ids that
do not exist; list endpoints never show them. Keys are stored hashed and compared with
hmac.compare_digest; a revoked key is refused once the API's key cache (`api_key_cache_seconds`) has expired."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.store.db import session_scope
from app.store.keys import revoke_key, tenant_for_key
from app.store.orm import ApiKey
from tests.reliability.conftest import Stack, report
from tests.support.servers import wait_for
from tests.support.service import job_of, new_key, register_teacher, submit, upload

pytestmark = [pytest.mark.slow, pytest.mark.services]

PARAM = re.compile(r"{(\w+)}")


def routes(api: TestClient) -> list[tuple[str, str]]:
    """Every operation of the live app's OpenAPI schema (FastAPI wraps included routers, so the schema is the
    dependable inventory; every /v1 route is in it)."""
    paths = api.app.openapi()["paths"]  # type: ignore[attr-defined]
    return [(method.upper(), path) for path, operations in paths.items() for method in operations]


def minimal(schema: dict, spec: dict) -> object:
    """The smallest valid-looking value of a JSON schema (so bodies pass validation and reach the lookup)."""
    if "$ref" in schema:
        return minimal(spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]], spec)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [o for o in schema[key] if o.get("type") != "null"] or schema[key]
            return minimal(options[0], spec)
    if "default" in schema:
        return schema["default"]
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {name: minimal(sub, spec) for name, sub in schema.get("properties", {}).items()
                if name in schema.get("required", [])}
    if kind == "array":
        return [minimal(schema.get("items", {}), spec) for _ in range(schema.get("minItems", 0))]
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return False
    return "good movie"


def body_for(api: TestClient, method: str, path: str) -> dict | None:
    spec = api.app.openapi()  # type: ignore[attr-defined]
    content = spec["paths"][path][method.lower()].get("requestBody", {}).get("content", {})
    if "application/json" not in content:
        return None
    return minimal(content["application/json"]["schema"], spec)  # type: ignore[return-value]


def test_every_endpoint_hides_other_tenants_ids(stack: Stack, api: TestClient, tiny_teacher: Path) -> None:
    owner = {"Authorization": f"Bearer {new_key(stack.settings)}"}
    intruder = {"Authorization": f"Bearer {new_key(stack.settings)}"}
    teacher = register_teacher(stack.settings, owner, tiny_teacher)
    dataset = upload(api, owner, 24)
    job = submit(api, owner, teacher, dataset)["id"]
    wait_for(lambda: job_of(api, owner, job)["status"] == "succeeded", 90, "the owner's job", interval=0.2,
             tail=stack.tail)
    checkpoint = api.get(f"/v1/jobs/{job}/checkpoints", headers=owner).json()["data"][0]["id"]
    # A public address literal (no lookup) and an event no job here sends: nothing is ever delivered to it.
    webhook = api.post("/v1/webhooks", headers=owner,
                       json={"url": "http://93.184.215.14/hooks", "event_types": ["job.paused"]}).json()["id"]
    ids = {"dataset_id": dataset, "model_id": teacher, "job_id": job, "checkpoint_id": checkpoint,
           "webhook_id": webhook}
    missing = {"dataset_id": "ds_00000000000000000000000000", "model_id": "mdl_00000000000000000000000000",
               "job_id": "job_00000000000000000000000000", "checkpoint_id": "ckpt_00000000000000000000000000",
               "webhook_id": "wh_00000000000000000000000000"}

    checked = []
    for method, path in routes(api):
        params = PARAM.findall(path)
        if not params:
            continue
        unknown = set(params) - set(ids)
        assert not unknown, f"{method} {path}: give this test an owned id for {unknown}"
        url = path.format(**ids)
        body = body_for(api, method, path)
        theirs = api.request(method, url, headers=intruder, json=body)
        assert theirs.status_code == 404, (method, url, theirs.status_code, theirs.text)
        assert theirs.json()["error"]["type"] == "not_found_error"
        nowhere = api.request(method, path.format(**missing), headers=intruder, json=body)
        assert nowhere.status_code == 404
        # The same answer as for an id that does not exist, apart from the id itself.
        scrub = {**{v: "ID" for v in ids.values()}, **{v: "ID" for v in missing.values()}}
        text_theirs, text_nowhere = theirs.json()["error"]["message"], nowhere.json()["error"]["message"]
        for value in scrub:
            text_theirs, text_nowhere = text_theirs.replace(value, "ID"), text_nowhere.replace(value, "ID")
        assert text_theirs == text_nowhere, (method, path)
        if method == "GET":
            assert api.get(url, headers=owner).status_code == 200, (method, url)
        checked.append(f"{method} {path}")
    assert len(checked) >= 10, checked

    listed = []
    for method, path in routes(api):
        if method == "GET" and path.startswith("/v1/") and not PARAM.findall(path):
            data = api.get(path + "?limit=100", headers=intruder).json()["data"]
            assert not {row["id"] for row in data} & set(ids.values()), path
            listed.append(path)
    # Still the owner's: the intruder's DELETE and cancel did nothing.
    assert api.get(f"/v1/datasets/{dataset}", headers=owner).status_code == 200
    assert job_of(api, owner, job)["status"] == "succeeded"
    body = {"teacher": teacher, "method": "kd", "student": {"num_layers": 1}, "training_dataset": dataset}
    assert api.post("/v1/jobs", headers=intruder, json=body).status_code == 404
    report(f"promise 8: {len(checked)} id routes -> 404 for another tenant ({', '.join(checked)}); "
           f"{len(listed)} list routes show none of its ids")


def test_keys_are_hashed_compared_in_constant_time_and_revocable(stack: Stack, api: TestClient,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    plain = new_key(stack.settings)
    headers = {"Authorization": f"Bearer {plain}"}
    with session_scope(stack.settings.database_url) as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hashlib.sha256(plain.encode()).hexdigest()))
        assert row is not None
        stored = {c.name: getattr(row, c.name) for c in ApiKey.__table__.columns}
    assert not any(plain in str(value) for value in stored.values()), "the plain key is stored"
    assert stored["prefix"] == plain[:12] and len(stored["key_hash"]) == 64

    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("app.store.keys.hmac.compare_digest", spy)
    with session_scope(stack.settings.database_url) as session:
        assert tenant_for_key(session, plain) is not None
        assert tenant_for_key(session, plain[:-1] + ("A" if plain[-1] != "A" else "B")) is None
    assert calls and calls[0] == (stored["key_hash"], stored["key_hash"])
    monkeypatch.undo()

    assert api.get("/v1/jobs", headers=headers).status_code == 200
    with session_scope(stack.settings.database_url) as session:
        assert [k.id for k in revoke_key(session, plain)] == [stored["id"]]
    ttl = stack.settings.api_key_cache_seconds
    time.sleep(ttl)  # the API remembers a valid key's tenant this long (per process)
    refused = api.get("/v1/jobs", headers=headers)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    report("promise 8: key row holds sha256 + 12-char prefix only; compare_digest used; revoked key -> 401 on "
           f"the first request after the {ttl:g} s key cache")
