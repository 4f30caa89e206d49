"""GET/POST /v1/jobs/{id}/checkpoints/{cid}/saliency: tokens with teacher and student saliency."""

from __future__ import annotations

import math
from pathlib import Path

from fastapi.testclient import TestClient

from app.store.settings import Settings
from tests.dashboard.conftest import TrainedJob, submit_job
from tests.support.service import new_key


def _url(trained: TrainedJob, kind: str = "final") -> str:
    checkpoint = next(c for c in trained.checkpoints if c["kind"] == kind)
    return f"/v1/jobs/{trained.job['id']}/checkpoints/{checkpoint['id']}/saliency"


def _check_example(example: dict) -> None:
    n = len(example["tokens"])
    assert n >= 3 and example["tokens"][0] == "[CLS]" and example["tokens"][-1] == "[SEP]"
    assert len(example["teacher"]) == n and len(example["student"]) == n
    for scores in (example["teacher"], example["student"]):
        assert all(s >= 0 for s in scores)
        assert math.isclose(math.sqrt(sum(s * s for s in scores)), 1.0, abs_tol=1e-3)  # L2-normalised
    assert example["teacher_prediction"]["label"] in ("negative", "positive")
    assert 0.5 <= example["student_prediction"]["confidence"] <= 1.0
    assert -1.0 <= example["agreement"] <= 1.0 + 1e-6


def test_dev_examples_of_the_held_out_split(api_client: TestClient, trained_job: TrainedJob) -> None:
    response = api_client.get(_url(trained_job) + "?limit=3", headers=trained_job.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "saliency" and body["source"] == "dev_split" and body["kind"] == "final"
    assert body["max_length"] == 16
    assert len(body["data"]) == 3
    for example in body["data"]:
        _check_example(example)
        assert example["label"] in ("negative", "positive")
        assert len(example["tokens"]) <= 16
    # The same again is served from the extracted copy and the loaded models: identical numbers.
    again = api_client.get(_url(trained_job) + "?limit=3", headers=trained_job.headers).json()
    assert again["data"] == body["data"]


def test_own_texts(api_client: TestClient, trained_job: TrainedJob) -> None:
    texts = ["the movie was great", "a dull and boring plot"]
    response = api_client.post(_url(trained_job, "best"), headers=trained_job.headers, json={"texts": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == "request" and body["kind"] == "best"
    assert [e["text"] for e in body["data"]] == texts
    assert body["data"][0]["tokens"] == ["[CLS]", "the", "movie", "was", "great", "[SEP]"]
    for example in body["data"]:
        _check_example(example)
        assert example["label"] is None


def test_validation(api_client: TestClient, trained_job: TrainedJob) -> None:
    url = _url(trained_job)
    assert api_client.get(url + "?limit=0", headers=trained_job.headers).status_code == 422
    assert api_client.get(url + "?limit=21", headers=trained_job.headers).status_code == 422
    too_many = api_client.post(url, headers=trained_job.headers, json={"texts": ["good"] * 21})
    assert too_many.status_code == 422 and too_many.json()["error"]["param"] == "texts"
    empty = api_client.post(url, headers=trained_job.headers, json={"texts": []})
    assert empty.status_code == 422
    pairs = api_client.post(url, headers=trained_job.headers, json={"texts": ["a"], "text_pairs": ["b", "c"]})
    assert pairs.status_code == 422
    assert api_client.get(url).status_code == 401


def test_max_length_past_the_teachers_positions_is_422_not_500(api_client: TestClient, trained_job: TrainedJob) -> None:
    """Issue 20 finding 7: 4096 tokens on the tiny teacher's 64 positions answered 500; now a 422 naming the limit."""
    url = _url(trained_job)
    long_text = "the movie was good " * 40  # 160 words: past the 64 positions once not truncated to them
    for response in (api_client.post(url, headers=trained_job.headers, json={"texts": [long_text], "max_length": 4096}),
                     api_client.get(url + "?max_length=65", headers=trained_job.headers)):
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["param"] == "max_length" and "(64 tokens)" in error["message"]
    fits = api_client.post(url, headers=trained_job.headers, json={"texts": [long_text], "max_length": 64})
    assert fits.status_code == 200 and fits.json()["max_length"] == 64
    assert len(fits.json()["data"][0]["tokens"]) == 64


def test_other_tenants_and_unknown_ids_get_404(api_client: TestClient, api_settings: Settings,
                                               trained_job: TrainedJob) -> None:
    other = {"Authorization": f"Bearer {new_key(api_settings)}"}
    response = api_client.get(_url(trained_job), headers=other)
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"
    assert api_client.post(_url(trained_job), headers=other, json={"texts": ["x"]}).status_code == 404
    job_id = trained_job.job["id"]
    missing = api_client.get(f"/v1/jobs/{job_id}/checkpoints/ckpt_nope/saliency", headers=trained_job.headers)
    assert missing.status_code == 404
    assert api_client.get("/v1/jobs/job_nope/checkpoints/ckpt_nope/saliency",
                          headers=trained_job.headers).status_code == 404


def test_409_before_the_first_checkpoint(api_client: TestClient, api_settings: Settings, tiny_teacher: Path) -> None:
    key = new_key(api_settings)
    job = submit_job(api_client, api_settings, key, tiny_teacher)  # queued; no worker runs it here
    response = api_client.get(f"/v1/jobs/{job['id']}/checkpoints/ckpt_x/saliency",
                              headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "no_checkpoint"


def test_validation_dataset_is_the_source(api_client: TestClient, api_settings: Settings,
                                          tiny_teacher: Path) -> None:
    from worker.runner import run_job

    key = new_key(api_settings)
    headers = {"Authorization": f"Bearer {key}"}
    job = submit_job(api_client, api_settings, key, tiny_teacher, dev=True)
    assert run_job(api_settings, job["id"]) == "succeeded"
    checkpoint = api_client.get(f"/v1/jobs/{job['id']}/checkpoints", headers=headers).json()["data"][0]
    body = api_client.get(f"/v1/jobs/{job['id']}/checkpoints/{checkpoint['id']}/saliency?limit=20",
                          headers=headers).json()
    assert body["source"] == "validation_dataset"
    assert len(body["data"]) == 12  # the whole dev file, fewer rows than the limit


def test_dashboard_is_served_with_a_strict_policy(api_client: TestClient) -> None:
    root = api_client.get("/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/dashboard/"
    page = api_client.get("/dashboard/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    script = api_client.get("/dashboard/static/js/main.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert api_client.get("/dashboard/static/vendor/uPlot.iife.min.js").status_code == 200
    for bad in ("../__init__.py", "..%2F__init__.py", "js/nope.js", "%2e%2e/%2e%2e/main.py"):
        response = api_client.get(f"/dashboard/static/{bad}")
        assert response.status_code == 404, bad
    paths = api_client.get("/openapi.json").json()["paths"]
    assert "/v1/jobs/{job_id}/checkpoints/{checkpoint_id}/saliency" in paths
    assert not any(p.startswith("/dashboard") for p in paths)
