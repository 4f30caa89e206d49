"""Storage backends: the local directory and an S3-compatible bucket (a real moto server over HTTP):
multipart uploads, directory objects, downloads into a worker's cache, and checkpoint downloads through the
API (streamed, or a 307 to a presigned URL)."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.store.db import session_scope
from app.store.ids import new_id
from app.store.orm import Checkpoint
from app.store.settings import Settings
from app.store.storage import get_storage
from app.store.storage.local import Storage
from tests.support.service import new_key, register_teacher, upload_dataset

MiB = 1024 * 1024


def s3_settings(home: Path, server: dict[str, Any], bucket: str, db_url: str, **extra: Any) -> Settings:
    return Settings(home=home, database_url=db_url, broker_url="memory://", migrate_on_start=False,
                    storage_backend="s3", s3_bucket=bucket, s3_prefix="gkd/", s3_endpoint_url=server["url"],
                    s3_region="us-east-1", s3_addressing_style="path", s3_multipart_threshold_bytes=5 * MiB,
                    s3_multipart_chunk_bytes=5 * MiB, task_queue=f"test-{secrets.token_hex(3)}", **extra)


def test_local_backend_is_the_storage_directory(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    storage = get_storage(settings)
    assert type(storage) is Storage and storage.kind == "local"
    path = storage.local_path("datasets/t/x.csv")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"text,label\n")
    storage.publish("datasets/t/x.csv")
    assert storage.exists("datasets/t/x.csv") and storage.materialize("datasets/t/x.csv") == path
    body, size = storage.stream("datasets/t/x.csv")
    assert b"".join(body) == b"text,label\n" and size == 11
    assert storage.download_url("datasets/t/x.csv", "x.csv") is None
    with pytest.raises(ValueError):
        storage.local_path("../outside")
    storage.delete("datasets/t/x.csv")
    assert not path.exists()


def test_s3_multipart_upload_and_download_to_another_machine(
    tmp_path: Path, s3_server: dict[str, Any], bucket: str, sqlite_url: str
) -> None:
    api = get_storage(s3_settings(tmp_path / "api", s3_server, bucket, sqlite_url))
    worker = get_storage(s3_settings(tmp_path / "worker", s3_server, bucket, sqlite_url))
    assert api.kind == "s3"
    big = api.local_path("jobs/j/checkpoints/final.tar.gz")
    big.parent.mkdir(parents=True)
    payload = os.urandom(11 * MiB + 123)
    big.write_bytes(payload)
    api.publish("jobs/j/checkpoints/final.tar.gz")
    head = s3_server["client"].head_object(Bucket=bucket, Key="gkd/jobs/j/checkpoints/final.tar.gz")
    assert head["ContentLength"] == len(payload)
    assert head["ETag"].strip('"').endswith("-3")  # three parts of 5 MiB, 5 MiB and the rest

    local = worker.materialize("jobs/j/checkpoints/final.tar.gz")
    assert local.is_relative_to(tmp_path / "worker") and local.read_bytes() == payload
    assert not list(local.parent.glob(".*.part"))

    model = api.local_path("models/t/mdl_x")
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "vocab.txt").write_text("a\nb\n")
    api.publish("models/t/mdl_x")
    assert worker.exists("models/t/mdl_x") and not worker.exists("models/t/other")
    fetched = worker.materialize("models/t/mdl_x")
    assert (fetched / "config.json").read_text() == "{}" and (fetched / "sub" / "vocab.txt").read_text() == "a\nb\n"

    (big).write_bytes(b"newer")  # a refresh replaces what the cache holds
    api.publish("jobs/j/checkpoints/final.tar.gz")
    assert worker.materialize("jobs/j/checkpoints/final.tar.gz", refresh=True).read_bytes() == b"newer"
    assert Path("/abs/teacher") == worker.materialize("/abs/teacher")  # imported in place: mounted on every host
    with pytest.raises(ValueError):
        worker.key("../../etc/passwd")

    api.delete("models/t/mdl_x")
    assert not api.exists("models/t/mdl_x") and not model.exists()


@pytest.mark.parametrize("presigned", [False, True])
def test_api_and_worker_with_a_bucket(tmp_path: Path, s3_server: dict[str, Any], bucket: str, sqlite_url: str,
                                      tiny_teacher: Path, presigned: bool) -> None:
    settings = s3_settings(tmp_path / "api", s3_server, bucket, sqlite_url, s3_presigned_downloads=presigned)
    headers = {"Authorization": f"Bearer {new_key(settings)}"}
    teacher = register_teacher(settings, headers, tiny_teacher)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        dataset = upload_dataset(client, headers)
        listed = s3_server["client"].list_objects_v2(Bucket=bucket, Prefix="gkd/datasets/")
        assert [o["Key"] for o in listed["Contents"]] == [f"gkd/datasets/{dataset_tenant(settings, headers)}/"
                                                          f"{dataset['id']}.csv"]
        response = client.post("/v1/jobs", headers=headers, json={
            "teacher": teacher, "training_dataset": dataset["id"], "method": "kd", "student": {"num_layers": 1},
            "hyperparameters": {"epochs": 1, "batch_size": 8, "max_length": 16}})
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]

        # The worker runs on another machine: its own storage directory, the same database and bucket.
        from app.store.job_config import config_for_job

        worker_settings = s3_settings(tmp_path / "worker", s3_server, bucket, sqlite_url)
        config = config_for_job(worker_settings, job_id)
        train = Path(config.data.train)
        assert train.is_relative_to(worker_settings.storage) and train.read_bytes() == (
            settings.storage / train.relative_to(worker_settings.storage)).read_bytes()
        assert Path(config.teacher) == tiny_teacher.resolve()  # imported in place, not a bucket object

        archive = b"not really a tarball " * 1000
        relative = f"jobs/{job_id}/checkpoints/final.tar.gz"
        target = worker_settings.storage / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(archive)
        get_storage(worker_settings).publish(relative)
        checkpoint = new_id("ckpt")
        with session_scope(settings.database_url) as session:
            session.add(Checkpoint(id=checkpoint, job_id=job_id, kind="final", path=relative,
                                   sha256=hashlib.sha256(archive).hexdigest(), size_bytes=len(archive), step=1,
                                   metrics={}))
        url = f"/v1/jobs/{job_id}/checkpoints/{checkpoint}/content"
        response = client.get(url, headers=headers, follow_redirects=False)
        if presigned:
            assert response.status_code == 307
            location = response.headers["location"]
            assert location.startswith(s3_server["url"]) and "Signature" in location
            assert httpx.get(location).content == archive
        else:
            assert response.status_code == 200, response.text
            assert response.content == archive
            assert response.headers["x-checksum-sha256"] == hashlib.sha256(archive).hexdigest()
            assert "final.tar.gz" in response.headers["content-disposition"]
        assert not (settings.storage / relative).exists()  # the API never needed a local copy


def dataset_tenant(settings: Settings, headers: dict[str, str]) -> str:
    from tests.support.service import tenant_id_of

    return tenant_id_of(settings, headers)


def test_finished_job_scratch_is_removed_from_the_bucket_and_disk(
    tmp_path: Path, s3_server: dict[str, Any], bucket: str, sqlite_url: str
) -> None:
    from worker.runner import discard_work

    settings = s3_settings(tmp_path / "worker", s3_server, bucket, sqlite_url)
    storage = get_storage(settings)
    for relative in ("jobs/j/work/state/training_state.pt", "jobs/j/checkpoints/best.tar.gz",
                     "jobs/other/work/state/training_state.pt"):
        path = storage.local_path(relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 10)
        storage.publish(relative)
    (storage.local_path("jobs/j/work/best")).mkdir()
    (storage.local_path("jobs/j/work/best/config.json")).write_text("{}")

    discard_work(settings, "j")

    assert not storage.local_path("jobs/j/work").exists()
    assert not storage.exists("jobs/j/work/state/training_state.pt")
    assert storage.exists("jobs/j/checkpoints/best.tar.gz")  # the packed checkpoints stay
    assert storage.exists("jobs/other/work/state/training_state.pt")  # another job's scratch is untouched
    discard_work(settings, "j")  # nothing left: no error
