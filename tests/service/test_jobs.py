"""Job submission checks, idempotency, listing, cancel, dataset-in-use, gapless events, the sweeper."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.main import create_app
from app.store.db import session_scope
from app.store.events import append_event
from app.store.orm import Job, JobEvent
from app.store.queue import sweep
from app.store.settings import Settings
from tests.service.test_api_basics import assert_error
from tests.support.factories import sentiment_rows
from tests.support.service import register_teacher, upload_dataset


@pytest.fixture
def setup(client: TestClient, auth: dict, settings: Settings, tiny_teacher: Path) -> dict:
    teacher = register_teacher(settings, auth, tiny_teacher)
    dataset = upload_dataset(client, auth)["id"]
    return {"teacher": teacher, "training_dataset": dataset, "student": {"num_layers": 1}}


def test_create_job(client: TestClient, auth: dict, setup: dict) -> None:
    response = client.post("/v1/jobs", headers=auth, json={**setup, "name": "run 1", "metadata": {"a": 1}})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["id"].startswith("job_") and job["object"] == "job" and job["status"] == "queued"
    assert job["method"] == "gradient_kd" and job["teacher"] == setup["teacher"]
    assert job["hyperparameters"]["learning_rate"] == 1e-4 and job["hyperparameters"]["epochs"] == 4
    assert job["student"]["num_layers"] == 1 and job["metadata"] == {"a": 1}
    assert job["progress"]["step"] == 0 and job["attempts"] == 0
    assert set(job["versions"]) == {"gkd", "torch", "transformers"}
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()["data"]
    assert [(e["seq"], e["type"], e["data"]) for e in events] == [(1, "status", {"status": "queued"})]


@pytest.mark.parametrize(
    ("change", "status", "param"),
    [
        ({"teacher": "mdl_unknown"}, 404, "teacher"),
        ({"training_dataset": "ds_unknown"}, 404, "training_dataset"),
        ({"validation_dataset": "ds_unknown"}, 404, "validation_dataset"),
        ({"student": {"num_layers": 3}}, 422, "student.num_layers"),
        ({"student": {"num_layers": 2, "init": [0, 5]}}, 422, "student.init"),
        ({"student": {"num_layers": 2, "init": [0]}}, 422, "student"),
        ({"hyperparameters": {"learning_rate": -1}}, 422, "hyperparameters.learning_rate"),
        ({"hyperparameters": {"epochs": "many"}}, 422, "hyperparameters.epochs"),
        ({"hyperparameters": {"warp": 9}}, 422, "hyperparameters.warp"),
        ({"method": "magic"}, 422, "method"),
        ({"method": "gradient_kd_cls", "student": {"num_layers": 1, "hidden_size": 16}}, 422, None),
        ({"surprise": True}, 422, "surprise"),
        ({"export": ["tflite"]}, 422, "export.0"),
        ({"export": ["onnx", "onnx"]}, 422, "export"),
        ({"export": "onnx"}, 422, "export"),
    ],
)
def test_invalid_jobs_name_the_field(client: TestClient, auth: dict, setup: dict, change: dict, status: int,
                                     param: str | None) -> None:
    error = assert_error(client.post("/v1/jobs", headers=auth, json={**setup, **change}), status,
                         "not_found_error" if status == 404 else "invalid_request_error")
    if param is not None:
        assert error["param"] == param, error
    assert client.get("/v1/jobs", headers=auth).json()["data"] == []


def test_export_is_stored_and_returned(client: TestClient, auth: dict, setup: dict, settings: Settings) -> None:
    job = client.post("/v1/jobs", headers=auth, json={**setup, "export": ["onnx-int8", "onnx"]}).json()
    assert job["export"] == ["onnx-int8", "onnx"]
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["export"] == ["onnx-int8", "onnx"]
    plain = client.post("/v1/jobs", headers=auth, json=setup).json()
    assert plain["export"] == []
    with session_scope(settings.database_url) as session:
        assert session.get(Job, plain["id"]).export is None  # NULL: nothing to export


def test_missing_body_field_and_bad_json(client: TestClient, auth: dict, setup: dict) -> None:
    error = assert_error(client.post("/v1/jobs", headers=auth, json={"teacher": setup["teacher"]}), 422,
                         "invalid_request_error", "training_dataset")
    assert error["code"] == "missing_parameter"
    assert_error(client.post("/v1/jobs", headers={**auth, "Content-Type": "application/json"}, content=b"{nope"),
                 422, "invalid_request_error", None)


def test_a_body_without_content_type_and_a_misspelt_field_say_what_to_do(client: TestClient, auth: dict,
                                                                          setup: dict) -> None:
    import json

    untyped = assert_error(client.post("/v1/jobs", headers=auth, content=json.dumps(setup).encode()), 422,
                           "invalid_request_error", None)
    assert "Content-Type: application/json" in untyped["message"]
    misspelt = {**setup, "hyperparameters": {"learning_rte": 1e-4}}
    typo = assert_error(client.post("/v1/jobs", headers=auth, json=misspelt), 422, "invalid_request_error",
                        "hyperparameters.learning_rte")
    assert "did you mean 'learning_rate'?" in typo["message"]
    top = assert_error(client.post("/v1/jobs", headers=auth, json={**setup, "techer": "x"}), 422,
                       "invalid_request_error", "techer")
    assert "did you mean 'teacher'?" in top["message"]
    nested = {**setup, "student": {"num_layers": 1, "init": {"model": "m", "layer": "bottom"}}}
    assert "did you mean 'layers'?" in client.post("/v1/jobs", headers=auth, json=nested).json()["error"]["message"]
    far = client.post("/v1/jobs", headers=auth, json={**setup, "zzzz": 1}).json()["error"]["message"]
    assert "did you mean" not in far
    # a field of another member of the union is no misspelling: that member's error says what is wrong
    empty = assert_error(client.post("/v1/jobs", headers=auth, json={**setup, "student": {"init": {
        "checkpoint": ""}}}), 422, "invalid_request_error", "student.init.checkpoint")
    assert "at least 1 character" in empty["message"] and "Extra inputs" not in empty["message"]


def test_other_tenants_dataset_and_teacher_are_invisible(client: TestClient, auth: dict, other_auth: dict,
                                                        setup: dict) -> None:
    assert_error(client.post("/v1/jobs", headers=other_auth, json=setup), 404, "not_found_error", "teacher")
    mine = upload_dataset(client, other_auth)["id"]
    assert_error(client.post("/v1/jobs", headers=other_auth, json={**setup, "training_dataset": mine}), 404,
                 "not_found_error", "teacher")
    theirs = {**setup, "training_dataset": mine}
    assert_error(client.post("/v1/jobs", headers=auth, json=theirs), 404, "not_found_error", "training_dataset")


def test_labels_must_match_the_teacher(client: TestClient, auth: dict, setup: dict) -> None:
    rows = [{"text": r["text"], "label": "happy" if r["label"] == "positive" else "sad"} for r in sentiment_rows(12)]
    other = upload_dataset(client, auth, rows)["id"]
    error = assert_error(client.post("/v1/jobs", headers=auth, json={**setup, "training_dataset": other}), 422,
                         "invalid_request_error", "training_dataset")
    assert error["code"] == "labels_mismatch"


def test_idempotency_key(client: TestClient, auth: dict, setup: dict) -> None:
    headers = {**auth, "Idempotency-Key": "abc-123"}
    first = client.post("/v1/jobs", headers=headers, json=setup)
    again = client.post("/v1/jobs", headers=headers, json=setup)
    assert first.status_code == 201 and again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    changed = client.post("/v1/jobs", headers=headers, json={**setup, "name": "different"})
    assert_error(changed, 409, "conflict_error")
    assert len(client.get("/v1/jobs", headers=auth).json()["data"]) == 1


def test_list_filter_pagination_and_cancel(client: TestClient, auth: dict, other_auth: dict, setup: dict) -> None:
    ids = [client.post("/v1/jobs", headers=auth, json=setup).json()["id"] for _ in range(3)]
    page = client.get("/v1/jobs?limit=2", headers=auth).json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:2] and page["has_more"]
    rest = client.get(f"/v1/jobs?limit=2&after={page['next_cursor']}", headers=auth).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and not rest["has_more"]

    assert_error(client.post(f"/v1/jobs/{ids[0]}/cancel", headers=other_auth), 404, "not_found_error")
    cancelled = client.post(f"/v1/jobs/{ids[0]}/cancel", headers=auth)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"]
    assert_error(client.post(f"/v1/jobs/{ids[0]}/cancel", headers=auth), 409, "conflict_error")
    assert [j["id"] for j in client.get("/v1/jobs?status=cancelled", headers=auth).json()["data"]] == [ids[0]]
    assert len(client.get("/v1/jobs?status=queued", headers=auth).json()["data"]) == 2
    assert_error(client.get("/v1/jobs?status=sleeping", headers=auth), 422, "invalid_request_error", "status")
    events = client.get(f"/v1/jobs/{ids[0]}/events", headers=auth).json()["data"]
    assert [e["data"]["status"] for e in events] == ["queued", "cancelled"]


def test_dataset_in_use_cannot_be_deleted(client: TestClient, auth: dict, setup: dict) -> None:
    job = client.post("/v1/jobs", headers=auth, json=setup).json()
    error = assert_error(client.delete(f"/v1/datasets/{setup['training_dataset']}", headers=auth), 409,
                         "conflict_error")
    assert job["id"] in error["message"]
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert client.delete(f"/v1/datasets/{setup['training_dataset']}", headers=auth).status_code == 200


def test_event_seq_is_gapless_with_concurrent_writers(client: TestClient, auth: dict, setup: dict,
                                                      settings: Settings) -> None:
    job_id = client.post("/v1/jobs", headers=auth, json=setup).json()["id"]

    def writer(n: int) -> None:
        for i in range(10):
            with session_scope(settings.database_url) as session:
                append_event(session, job_id, "log", f"writer {n} event {i}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # A rolled back event gives its number back.
    with pytest.raises(RuntimeError), session_scope(settings.database_url) as session:
        append_event(session, job_id, "log", "never committed")
        raise RuntimeError
    with session_scope(settings.database_url) as session:
        append_event(session, job_id, "log", "last")
        seqs = session.scalars(select(JobEvent.seq).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)).all()
    assert list(seqs) == list(range(1, 43))


def test_stream_of_a_finished_job_ends(client: TestClient, auth: dict, setup: dict) -> None:
    job_id = client.post("/v1/jobs", headers=auth, json=setup).json()["id"]
    client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    with client.stream("GET", f"/v1/jobs/{job_id}/events/stream", headers=auth) as response:
        lines = list(response.iter_lines())
    assert "id: 1" in lines and "id: 2" in lines
    with client.stream("GET", f"/v1/jobs/{job_id}/events/stream?after=2", headers=auth) as response:
        assert not [line for line in response.iter_lines() if line.startswith("data:")]


def test_polled_reads_answer_what_the_orm_object_answers(client: TestClient, auth: dict, setup: dict) -> None:
    """The job read and the list select only `JobOut.READS` as plain rows; the create answers from the ORM object
    with every column loaded. All three must agree field for field."""
    body = {**setup, "name": "fields ✓", "metadata": {"k": "vé ✓ 😀", "quote": "\"\\"}}
    created = client.post("/v1/jobs", headers=auth, json=body)
    assert created.status_code == 201, created.text
    job = created.json()
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json() == job
    assert client.get("/v1/jobs?limit=1", headers=auth).json()["data"] == [job]


def test_job_progress_answers_only_its_fields(client: TestClient, auth: dict, setup: dict,
                                             settings: Settings) -> None:
    """`progress` as stored holds more than the answer shows (the worker's `estimated_finish_at`, keys of other
    versions); the reads answer only `Progress`'s fields, validated."""
    job_id = client.post("/v1/jobs", headers=auth, json=setup).json()["id"]
    stored = {"step": 3, "total_steps": 9, "epoch": 1, "fraction": 0.33, "eta_seconds": 4.5, "unknown": [1],
              "estimated_finish_at": "2030-01-01T00:00:00Z"}
    with session_scope(settings.database_url) as session:
        session.get(Job, job_id).progress = stored
    expected = {"step": 3, "total_steps": 9, "epoch": 1, "fraction": 0.33, "eta_seconds": 4.5, "phase": None}
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["progress"] == expected
    assert client.get("/v1/jobs?limit=1", headers=auth).json()["data"][0]["progress"] == expected


def test_stream_is_scoped_to_the_tenant_and_opens_with_its_retry_line(client: TestClient, auth: dict,
                                                                      other_auth: dict, setup: dict) -> None:
    """The stream's job check runs on the read path (app/reads.py): another tenant's job is a 404 like the job read
    itself, a bad Last-Event-ID is still a 422, and the first line of a stream is its `retry:` (sent before the
    stream subscribes to wake-ups and reads the events)."""
    job_id = client.post("/v1/jobs", headers=auth, json=setup).json()["id"]
    client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    stream = f"/v1/jobs/{job_id}/events/stream"
    for headers in (other_auth, {**other_auth, "Last-Event-ID": "x"}):
        error = assert_error(client.get(stream, headers=headers), 404, "not_found_error", param=None)
        assert error == assert_error(client.get(f"/v1/jobs/{job_id}", headers=other_auth), 404,
                                     "not_found_error", param=None)
    assert_error(client.get(stream, headers={**auth, "Last-Event-ID": "x"}), 422, "invalid_request_error",
                 param="Last-Event-ID")
    with client.stream("GET", stream, headers=auth) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        lines = list(response.iter_lines())
    assert lines[0] == "retry: 2000"
    assert [line for line in lines if line.startswith("id: ")] == ["id: 1", "id: 2"]


def test_broker_down_leaves_job_queued_and_sweeper_enqueues(settings: Settings, auth: dict, setup: dict) -> None:
    settings.broker_url = "redis://127.0.0.1:1/0"
    settings.enqueue_timeout_seconds = 0.5
    with TestClient(create_app(settings), raise_server_exceptions=False) as down:
        response = down.post("/v1/jobs", headers=auth, json=setup)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "queued" and job.enqueued_at is None

    from app.store.queue import make_celery

    # A sweep while the broker is still down sends nothing and leaves the job for the next sweep.
    settings.requeue_after_seconds = 0.001
    with session_scope(settings.database_url) as session:
        assert sweep(make_celery(settings), settings, session)["queued"] == 0
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.enqueued_at is None

    settings.broker_url = "memory://"
    celery = make_celery(settings)
    with session_scope(settings.database_url) as session:
        counts = sweep(celery, settings, session)
    assert counts["queued"] >= 1
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.enqueued_at is not None
    with celery.connection_for_read() as conn:
        queue = conn.SimpleQueue(settings.task_queue)
        message = queue.get(timeout=2)
        assert message.headers["task"] == "worker.tasks.run_job"
        queue.close()


@pytest.fixture(scope="module")
def base_encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two encoders a student could start from: one with the teacher's tokenizer (3 layers, hidden 48), one
    whose vocabulary is larger than the teacher's."""
    from transformers import BertForSequenceClassification

    from tests.support.factories import make_tiny_teacher, tiny_bert_config, write_tokenizer

    root = tmp_path_factory.mktemp("bases")
    same = make_tiny_teacher(root / "same", num_layers=3, hidden=48, seed=1)
    config = tiny_bert_config(2, 32)
    config.vocab_size += 10
    other = root / "other"
    BertForSequenceClassification(config).save_pretrained(str(other), safe_serialization=True)
    write_tokenizer(other)
    return {"same": same, "other": other}


def test_max_length_is_bounded_by_the_teachers_positions(client: TestClient, auth: dict, setup: dict) -> None:
    too_long = {**setup, "hyperparameters": {"max_length": 65}}  # the tiny teacher has 64 positions
    error = assert_error(client.post("/v1/jobs", headers=auth, json=too_long), 422, "invalid_request_error",
                         "hyperparameters.max_length")
    assert "64 tokens" in error["message"]
    fits = {**setup, "hyperparameters": {"max_length": 64}}
    assert client.post("/v1/jobs", headers=auth, json=fits).status_code == 201
    default = client.post("/v1/jobs", headers=auth, json=setup).json()  # the default 128 is capped, not refused
    assert default["hyperparameters"]["max_length"] == 64


def test_a_student_can_start_from_another_registered_encoder(client: TestClient, auth: dict, setup: dict,
                                                              settings: Settings,
                                                              base_encoders: dict[str, Path]) -> None:
    base = register_teacher(settings, auth, base_encoders["same"], name="small-base")
    body = {**setup, "student": {"num_layers": 2, "init": {"model": "small-base", "layers": "every_other"}}}
    response = client.post("/v1/jobs", headers=auth, json=body)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["student"]["init"] == {"model": base, "layers": "every_other"}  # the name resolved to the id

    from app.store.job_config import config_for_job as build_config

    config = build_config(settings, job["id"])  # the worker reads the model's directory, not its name
    assert Path(config.student.init.model).resolve() == base_encoders["same"].resolve()

    def refused(student: dict, method: str = "gradient_kd") -> dict:
        answer = client.post("/v1/jobs", headers=auth, json={**setup, "method": method, "student": student})
        assert answer.status_code == 422, answer.text
        return answer.json()["error"]

    assert refused({"num_layers": 4, "init": {"model": base}})["param"] == "student.num_layers"
    assert refused({"num_layers": 2, "init": {"model": base, "layers": [0, 3]}})["param"] == "student.init.layers"
    wide = refused({"num_layers": 2, "init": {"model": base}}, method="pkd")
    assert wide["param"] == "student.init.model" and "width" in wide["message"]
    assert "student" in refused({"num_layers": 2, "hidden_size": 64, "init": {"model": base}})["param"]
    unknown = client.post("/v1/jobs", headers=auth, json={**setup, "student": {"num_layers": 1,
                                                                             "init": {"model": "no-such-model"}}})
    assert_error(unknown, 404, "not_found_error", "student.init.model")  # as an unknown teacher
    register_teacher(settings, auth, base_encoders["other"], name="other-vocab")
    vocab = refused({"num_layers": 1, "init": {"model": "other-vocab"}})
    assert vocab["param"] == "student.init.model" and "tokenizer" in vocab["message"]


def test_integer_labels_meet_a_teacher_through_label_map(client: TestClient, auth: dict, settings: Settings,
                                                         setup: dict, tmp_path: Path) -> None:
    from tests.support.factories import make_tiny_teacher

    numbered = [{**row, "label": "1" if row["label"] == "positive" else "0"} for row in sentiment_rows(24)]
    dataset = upload_dataset(client, auth, numbered, name="numbered.csv")["id"]
    # A teacher with transformers' default names: integers map onto LABEL_i by themselves.
    default_names = register_teacher(settings, auth, make_tiny_teacher(tmp_path / "t", labels=("LABEL_0", "LABEL_1")),
                                     name="default-names")
    job = client.post("/v1/jobs", headers=auth, json={**setup, "teacher": default_names,
                                                       "training_dataset": dataset})
    assert job.status_code == 201, job.text
    assert job.json()["label_map"] == {"0": "LABEL_0", "1": "LABEL_1"}
    # A named teacher: refused with a copy-paste hint, accepted with the map, which the worker receives.
    refused = assert_error(client.post("/v1/jobs", headers=auth, json={**setup, "training_dataset": dataset}), 422,
                           "invalid_request_error", "training_dataset")
    assert refused["code"] == "labels_mismatch"
    assert '"label_map": {"0": "negative", "1": "positive"}' in refused["message"]
    mapped = client.post("/v1/jobs", headers=auth, json={**setup, "training_dataset": dataset,
                                                          "label_map": {"0": "negative", "1": "positive"}})
    assert mapped.status_code == 201, mapped.text
    from app.store.job_config import config_for_job as build_config

    assert build_config(settings, mapped.json()["id"]).data.label_map == {"0": "negative", "1": "positive"}
    wrong = assert_error(client.post("/v1/jobs", headers=auth, json={**setup, "training_dataset": dataset,
                                                                      "label_map": {"0": "nope", "1": "positive"}}),
                         422, "invalid_request_error", "label_map")
    assert "nope" in wrong["message"]


@pytest.mark.parametrize("label_map", [
    {str(i): "negative" for i in range(1001)},  # more entries than any label set
    {"0" * 10_000: "negative"},  # a name longer than any label
    {"0": ""},
])
def test_a_hostile_label_map_is_refused_before_anything_is_stored(client: TestClient, auth: dict, setup: dict,
                                                                  settings: Settings, label_map: dict) -> None:
    def jobs() -> int:
        with session_scope(settings.database_url) as session:
            return len(session.scalars(select(Job.id)).all())

    before = jobs()
    error = assert_error(client.post("/v1/jobs", headers=auth, json={**setup, "label_map": label_map}), 422,
                         "invalid_request_error")
    assert error["param"].startswith("label_map")
    assert jobs() == before


@pytest.mark.parametrize("change", [
    {"teacher": "tiny\x00"}, {"training_dataset": "ds_\x00"}, {"name": "run \ud800"},
    {"student": {"num_layers": 1, "init": {"model": "m\x00"}}}, {"label_map": {"0\x00": "negative"}},
])
def test_text_a_database_cannot_store_is_a_422_on_both_backends(client: TestClient, auth: dict, setup: dict,
                                                                  change: dict) -> None:
    """NUL reached PostgreSQL's query (a 500 there; found by tests/reliability/test_schema.py) and a lone surrogate
    cannot be encoded: both are refused while the body is read, with the field named."""
    import json

    body = json.dumps({**setup, **change}).encode()  # ASCII JSON: a lone surrogate travels as its \\u escape
    response = client.post("/v1/jobs", headers={**auth, "Content-Type": "application/json"}, content=body)
    error = assert_error(response, 422, "invalid_request_error")
    assert error["param"].split(".")[0] == next(iter(change))
