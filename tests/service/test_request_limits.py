"""Issue 20, findings 5, 9 and 12 in-process (both backends through the `client` fixture): every request body,
form and message is bounded, refused with the envelope and leaves nothing behind; start-up sweeps what a killed
process left in storage/tmp; messages show paths relative to the tenant's ids; the stream's type is documented.
The server-level parts (header bound, shutdown timeout) are tests/service/test_server_process.py."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.store.orm import Dataset, Job, TeacherModel
from app.store.public_paths import public_text, storage_view
from app.store.settings import Settings
from tests.service.test_api_basics import assert_error
from tests.service.test_hostile_input import count, post_json
from tests.service.test_models import tar_of, upload
from tests.support.factories import csv_bytes, sentiment_rows
from tests.support.service import register_teacher, tenant_id_of, upload_dataset


@pytest.fixture
def setup(client: TestClient, auth: dict, settings: Settings, tiny_teacher: Path) -> dict:
    teacher = register_teacher(settings, auth, tiny_teacher)
    dataset = upload_dataset(client, auth)["id"]
    return {"teacher": teacher, "training_dataset": dataset, "student": {"num_layers": 1}}


def tmp_entries(settings: Settings) -> list[str]:
    return sorted(p.name for p in settings.tmp_dir.iterdir()) if settings.tmp_dir.is_dir() else []


def job_body_of(setup: dict, size: int) -> bytes:
    """A job body padded to `size` bytes by whitespace, which JSON allows anywhere between tokens."""
    text = json.dumps(setup)
    return (text[:-1] + " " * max(0, size - len(text)) + "}").encode()


# finding 5: a bound on the whole body, also without Content-Length
def test_a_json_body_over_the_bound_is_a_413_with_or_without_content_length(
        client: TestClient, auth: dict, settings: Settings, setup: dict) -> None:
    before = count(settings, Job)
    body = job_body_of(setup, settings.max_request_bytes + 1)
    declared = client.post("/v1/jobs", headers={**auth, "Content-Type": "application/json"}, content=body)
    error = assert_error(declared, 413, "invalid_request_error")
    assert error["code"] == "payload_too_large" and str(settings.max_request_bytes) in error["message"]

    def chunks() -> Iterator[bytes]:  # chunked: the count must trip while the body arrives
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    chunked = client.post("/v1/jobs", headers={**auth, "Content-Type": "application/json"}, content=chunks())
    assert assert_error(chunked, 413, "invalid_request_error")["code"] == "payload_too_large"
    assert count(settings, Job) == before
    # the bound is on bytes, not on content: the same job within it is created
    fits = client.post("/v1/jobs", headers={**auth, "Content-Type": "application/json"},
                       content=job_body_of(setup, settings.max_request_bytes - 10))
    assert fits.status_code == 201, fits.text


def test_a_50_mb_metadata_body_is_refused_and_nothing_stored(client: TestClient, auth: dict, settings: Settings,
                                                             setup: dict) -> None:
    """The tester's 50 MB `metadata` was stored; now the body bound refuses it before it is parsed."""
    before = count(settings, Job)
    metadata = '{"note": "' + "x" * (50 * 1024 * 1024) + '"}'
    response = post_json(client, auth, "/v1/jobs", json.dumps(setup)[:-1] + ', "metadata": ' + metadata + "}")
    assert assert_error(response, 413, "invalid_request_error")["code"] == "payload_too_large"
    assert count(settings, Job) == before


@pytest.mark.parametrize(("extra", "message"), [
    ({f"k{i}": 1 for i in range(51)}, "at most 50"),
    ({"k" * 101: 1}, "at most 100"),
    ({"k": "v" * 2_001}, "at most 2000"),
    ({f"k{i}": "v" * 1_900 for i in range(10)}, "16384 characters"),
])
def test_metadata_keys_values_and_total_are_bounded(client: TestClient, auth: dict, settings: Settings, setup: dict,
                                                     extra: dict, message: str) -> None:
    before = count(settings, Job)
    error = assert_error(client.post("/v1/jobs", headers=auth, json={**setup, "metadata": extra}), 422,
                         "invalid_request_error")
    assert error["param"].split(".")[0] == "metadata" and message in error["message"], error
    assert count(settings, Job) == before


def form_with_fields(fields: int, field_bytes: int, boundary: str = "b0undary") -> Iterator[bytes]:
    """A dataset upload form with `fields` text parts before its file, streamed (no Content-Length)."""
    value = b"v" * field_bytes
    for i in range(fields):
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\n'.encode() + value + b"\r\n")
    yield f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.csv"\r\n\r\n'.encode()
    yield csv_bytes(sentiment_rows(8)) + f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.parametrize(("fields", "field_bytes", "message"), [
    (3_000, 1_000, "more than 16 parts"),  # the tester's 3,000 fields (smaller here): the count trips first
    (1, 70 * 1024, "exceeds 65536 bytes"),
])
def test_form_fields_are_bounded_in_number_and_size(client: TestClient, auth: dict, settings: Settings,
                                                    fields: int, field_bytes: int, message: str) -> None:
    before = count(settings, Dataset)
    response = client.post("/v1/datasets", headers={**auth, "Content-Type": "multipart/form-data; boundary=b0undary"},
                           content=form_with_fields(fields, field_bytes))
    error = assert_error(response, 413, "invalid_request_error")
    assert error["code"] == "payload_too_large" and message in error["message"], error
    assert count(settings, Dataset) == before
    assert tmp_entries(settings) == []
    ok = client.post("/v1/datasets", headers={**auth, "Content-Type": "multipart/form-data; boundary=b0undary"},
                     content=form_with_fields(2, 100))
    assert ok.status_code == 201, ok.text


def test_a_part_header_without_end_is_bounded(client: TestClient, auth: dict, settings: Settings) -> None:
    def body() -> Iterator[bytes]:
        yield b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="d.csv"\r\nX-Long: '
        for _ in range(100):
            yield b"h" * 1024

    response = client.post("/v1/datasets", headers={**auth, "Content-Type": "multipart/form-data; boundary=b0undary"},
                           content=body())
    error = assert_error(response, 400, "invalid_request_error", "file")  # python_multipart's own header bound
    assert error["code"] == "malformed_upload" and "header" in error["message"]
    assert tmp_entries(settings) == []


# finding 12: a boundary the parser refuses to build itself around
@pytest.mark.parametrize("length", [257, 5_000])
def test_a_boundary_over_256_characters_is_a_400(client: TestClient, auth: dict, settings: Settings,
                                                 length: int) -> None:
    boundary = "b" * length
    before = count(settings, Dataset)
    headers = {**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    response = client.post("/v1/datasets", headers=headers, content=b"".join(form_with_fields(0, 0, boundary)))
    error = assert_error(response, 400, "invalid_request_error", "file")
    assert error["code"] == "malformed_upload" and "256" in error["message"]
    assert count(settings, Dataset) == before and tmp_entries(settings) == []


# finding 12: paths relative to the tenant's ids
def test_a_model_422_names_the_archive_not_the_server_path(client: TestClient, auth: dict, settings: Settings,
                                                           tiny_teacher: Path, tmp_path: Path) -> None:
    directory = tmp_path / "model"
    shutil.copytree(tiny_teacher, directory)
    (directory / "config.json").unlink()
    before = count(settings, TeacherModel)
    error = assert_error(upload(client, auth, "m.tar.gz", tar_of(directory)), 422, "invalid_request_error")
    assert error["message"].startswith("the archive has no config.json"), error
    assert str(settings.home) not in error["message"] and tenant_id_of(settings, auth) not in error["message"]
    assert count(settings, TeacherModel) == before


def test_every_api_error_message_shows_storage_paths_relative_to_the_ids(settings: Settings) -> None:
    """Whatever route formats a path into its ApiError, the handler rewrites it before it leaves."""
    from app.errors import ApiError

    app = create_app(settings)
    leaked = settings.storage / "models" / "tenant-secret" / "mdl_1" / "config.json"

    @app.get("/leak")
    def leak() -> None:
        raise ApiError(422, f"cannot read {leaked}: broken")

    with TestClient(app, raise_server_exceptions=False) as client:
        error = assert_error(client.get("/leak"), 422, "invalid_request_error")
    assert error["message"] == "cannot read mdl_1/config.json: broken"


@pytest.mark.parametrize(("relative", "shown"), [
    ("models/tenant-a/mdl_1/config.json", "mdl_1/config.json"),
    ("datasets/tenant-a/ds_1.csv", "ds_1.csv"),
    ("jobs/job_1/work/best", "job_1/work/best"),
    ("tmp/upload-x.part", "upload-x.part"),
    ("", "storage"),
])
def test_storage_view_drops_the_tenant_directory(relative: str, shown: str) -> None:
    assert storage_view(relative) == shown


def test_public_text_rewrites_storage_cache_and_home_but_not_lookalikes(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    storage, cache = settings.storage, settings.cache_dir
    text = (f"cannot read {storage}/datasets/ten_9/ds_1.csv: gone; '{cache}/abc/teacher.pt' and {settings.home}/x, "
            f"not {settings.home}2/y")
    assert public_text(text, settings) == (
        f"cannot read ds_1.csv: gone; 'teacher-cache/abc/teacher.pt' and x, not {settings.home}2/y")


def test_a_failed_job_error_shows_paths_relative_to_the_ids(client: TestClient, auth: dict, settings: Settings,
                                                             setup: dict) -> None:
    """The worker's error of a job whose dataset file vanished named `<storage>/datasets/<tenant>/<id>.csv`."""
    from worker.runner import run_job

    job = client.post("/v1/jobs", headers=auth, json=setup).json()["id"]
    tenant = tenant_id_of(settings, auth)
    (settings.storage / "datasets" / tenant / f"{setup['training_dataset']}.csv").unlink()
    assert run_job(settings, job) == "failed"
    failed = client.get(f"/v1/jobs/{job}", headers=auth).json()
    assert failed["status"] == "failed" and failed["error"]
    assert str(settings.home) not in failed["error"] and tenant not in failed["error"], failed["error"]


# finding 9: the start-up sweep
def test_start_up_sweeps_stale_temporaries_and_keeps_fresh_ones(settings: Settings) -> None:
    tmp = settings.tmp_dir
    tmp.mkdir(parents=True)
    old = time.time() - settings.tmp_stale_seconds - 60
    (tmp / "upload-old.part").write_bytes(b"x" * 100)
    os.utime(tmp / "upload-old.part", (old, old))
    extracted = tmp / "model-old" / "x" / "sub"
    extracted.mkdir(parents=True)
    (extracted / "model.safetensors").write_bytes(b"w" * 100)
    for path in (extracted / "model.safetensors", extracted, extracted.parent, tmp / "model-old"):
        os.utime(path, (old, old))
    (tmp / "upload-live.part").write_bytes(b"y")  # another API process is writing it now
    busy = tmp / "model-busy" / "x"
    busy.mkdir(parents=True)
    os.utime(busy.parent, (old, old))  # an old directory...
    (busy / "config.json").write_text("{}")  # ...where a file was just written: an extraction in progress
    extract = settings.storage / "jobs" / "job_1" / "extracted" / ".extract-abc"  # a saliency extraction cut off
    extract.mkdir(parents=True)
    os.utime(extract, (old, old))
    done = extract.parent / "ckpt_1-0123"  # a complete one stays, however old
    done.mkdir()
    os.utime(done, (old, old))

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/healthz").status_code == 200
    assert tmp_entries(settings) == ["model-busy", "upload-live.part"]
    assert sorted(p.name for p in extract.parent.iterdir()) == ["ckpt_1-0123"]


# finding 12: the stream's type in the OpenAPI document
def test_the_event_stream_is_text_event_stream_in_openapi(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/events/stream"]["get"]
    content = operation["responses"]["200"]["content"]
    assert list(content) == ["text/event-stream"]


def test_the_body_count_trips_at_the_first_message_past_the_bound() -> None:
    """No Content-Length: the middleware counts what `receive` hands the app and stops it one message past."""
    import asyncio

    from app.body_limit import BodyLimitMiddleware, BodyTooLarge

    read: list[int] = []

    async def app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
        while True:
            message = await receive()
            read.append(len(message["body"]))
            if not message.get("more_body"):
                return

    async def receive() -> dict:
        return {"type": "http.request", "body": b"x" * 400, "more_body": True}  # an endless chunked body

    async def send(message: dict) -> None:
        raise AssertionError("the middleware answers through the app's handler, not by itself")

    scope = {"type": "http", "method": "POST", "path": "/v1/jobs", "headers": [(b"content-type", b"application/json")]}
    with pytest.raises(BodyTooLarge):
        asyncio.run(BodyLimitMiddleware(app, lambda _scope: 1000)(scope, receive, send))  # type: ignore[arg-type]
    assert read == [400, 400]  # the third message (1,200 bytes in all) was refused, not handed on
