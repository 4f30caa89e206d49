"""Dataset uploads: validation report, limits, refusals that leave nothing behind, tenancy, pagination."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.store.db import session_scope
from app.store.orm import Dataset
from app.store.settings import Settings
from tests.service.test_api_basics import assert_error
from tests.support.factories import csv_bytes, sentiment_rows
from tests.support.service import tenant_id_of, upload_dataset


def stored_files(settings: Settings) -> list[Path]:
    return [p for p in settings.storage.rglob("*") if p.is_file()]


def dataset_rows(settings: Settings, headers: dict) -> int:
    tenant_id = tenant_id_of(settings, headers)
    with session_scope(settings.database_url) as session:
        return session.scalar(select(func.count()).select_from(Dataset).where(Dataset.tenant_id == tenant_id))


def test_upload_returns_validation_report(client: TestClient, auth: dict, settings: Settings) -> None:
    rows = sentiment_rows(20) + [sentiment_rows(20)[0]]
    dataset = upload_dataset(client, auth, rows)
    assert dataset["id"].startswith("ds_") and dataset["object"] == "dataset"
    assert dataset["format"] == "csv" and dataset["rows"] == 21
    assert sorted(dataset["labels"]) == ["negative", "positive"]
    assert len(dataset["sha256"]) == 64
    validation = dataset["validation"]
    assert validation["errors"] == [] and validation["duplicate_rows"] == 1
    assert validation["label_counts"] == {"negative": 11, "positive": 10}
    assert {"warnings", "empty_rows", "over_max_length"} <= set(validation)
    assert client.get(f"/v1/datasets/{dataset['id']}", headers=auth).json() == dataset
    assert len(stored_files(settings)) == 1


def test_malformed_upload_stores_nothing(client: TestClient, auth: dict, settings: Settings) -> None:
    bad = b"sentence,label\nhello,positive\n"  # no `text` column
    error = assert_error(
        client.post("/v1/datasets", headers=auth, files={"file": ("bad.csv", bad, "text/csv")}),
        422, "invalid_request_error", "file",
    )
    assert "text" in error["message"]
    one_label = csv_bytes([{"text": "good", "label": "positive"}, {"text": "fine", "label": "positive"}])
    assert_error(client.post("/v1/datasets", headers=auth, files={"file": ("one.csv", one_label)}), 422,
                 "invalid_request_error", "file")
    assert stored_files(settings) == []
    assert dataset_rows(settings, auth) == 0


def test_oversized_upload_is_refused_while_streaming(client: TestClient, auth: dict, settings: Settings) -> None:
    settings.max_dataset_bytes = 2000
    body = csv_bytes(sentiment_rows(400))
    assert len(body) > 10_000
    error = assert_error(client.post("/v1/datasets", headers=auth, files={"file": ("big.csv", body)}), 413,
                         "invalid_request_error", "file")
    assert error["code"] == "payload_too_large"

    def chunks():  # no Content-Length: the limit must trip while streaming
        boundary = b"XyZ"
        yield b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.csv\"\r\n\r\n"
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]
        yield b"\r\n--" + boundary + b"--\r\n"

    response = client.post("/v1/datasets", headers={**auth, "Content-Type": "multipart/form-data; boundary=XyZ"},
                           content=chunks())
    assert_error(response, 413, "invalid_request_error", "file")
    assert stored_files(settings) == []
    assert dataset_rows(settings, auth) == 0


def test_unsupported_type_and_not_multipart(client: TestClient, auth: dict, settings: Settings) -> None:
    error = assert_error(client.post("/v1/datasets", headers=auth, files={"file": ("data.xlsx", b"PK\x03\x04")}),
                         415, "invalid_request_error", "file")
    assert error["code"] == "unsupported_file_type"
    assert_error(client.post("/v1/datasets", headers=auth, json={"file": "x"}), 415, "invalid_request_error")
    assert_error(client.post("/v1/datasets", headers=auth, data={"name": "x"}, files={"other": ("a.csv", b"x")}),
                 422, "invalid_request_error", "file")
    assert stored_files(settings) == []


def test_jsonl_upload_and_tenancy(client: TestClient, auth: dict, other_auth: dict) -> None:
    body = b'{"text": "good film", "label": "positive"}\n{"text": "bad film", "label": "negative"}\n'
    response = client.post("/v1/datasets", headers=auth, files={"file": ("d.jsonl", body)}, data={"name": "mine"})
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["format"] == "jsonl" and dataset["name"] == "mine"
    assert_error(client.get(f"/v1/datasets/{dataset['id']}", headers=other_auth), 404, "not_found_error")
    assert_error(client.delete(f"/v1/datasets/{dataset['id']}", headers=other_auth), 404, "not_found_error")
    assert client.get("/v1/datasets", headers=other_auth).json()["data"] == []


def test_pagination_and_delete(client: TestClient, auth: dict, settings: Settings) -> None:
    ids = [upload_dataset(client, auth, name=f"d{i}.csv")["id"] for i in range(3)]
    first = client.get("/v1/datasets?limit=2", headers=auth).json()
    assert first["object"] == "list" and first["has_more"] is True
    assert [d["id"] for d in first["data"]] == ids[::-1][:2]
    second = client.get(f"/v1/datasets?limit=2&after={first['next_cursor']}", headers=auth).json()
    assert [d["id"] for d in second["data"]] == [ids[0]]
    assert second["has_more"] is False and second["next_cursor"] is None
    assert_error(client.get("/v1/datasets?after=nonsense", headers=auth), 422, "invalid_request_error", "after")

    deleted = client.delete(f"/v1/datasets/{ids[0]}", headers=auth)
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert_error(client.get(f"/v1/datasets/{ids[0]}", headers=auth), 404, "not_found_error")
    assert len(stored_files(settings)) == 2


def test_row_limit(client: TestClient, auth: dict, settings: Settings) -> None:
    settings.max_dataset_rows = 5
    response = client.post("/v1/datasets", headers=auth, files={"file": ("d.csv", csv_bytes(sentiment_rows(10)))})
    assert_error(response, 422, "invalid_request_error", "file")
    assert stored_files(settings) == []
