"""The dashboard end to end in headless Chromium against a real API server and Celery worker: sign in with a
key, upload a dataset, submit a tiny job from the schema-generated form, watch the curves grow until the job
succeeds, download the checkpoint, look at saliency, filter the job list and cancel a job.

Screenshots of every page go to test-artifacts/dashboard/ (gitignored)."""

from __future__ import annotations

import hashlib
import json
import secrets
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.store.settings import Settings
from tests.dashboard.conftest import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from tests.support.factories import csv_bytes, sentiment_rows
from tests.support.servers import Server, start_worker, stop, wait_for
from tests.support.service import new_key, register_teacher

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: `apt-get install -y chromium` "
                       "(make install does it) to run the browser tests"),
]

# Every input must be labelled (a <label for>, a wrapping label, aria-label or aria-labelledby).
UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea')]
  .filter((el) => el.type !== 'hidden' && !el.labels?.length && !el.getAttribute('aria-label')
                  && !el.getAttribute('aria-labelledby'))
  .map((el) => el.id || el.name || el.outerHTML)"""


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, str]]:
    from app.store.db import upgrade

    home = tmp_path_factory.mktemp("dash-service")
    settings = Settings(home=home, database_url=f"sqlite:///{home / 'gkd.db'}", broker_url="",
                        task_queue=f"dash-test-{secrets.token_hex(4)}", migrate_on_start=False)
    settings.ensure_dirs()
    upgrade(settings.database_url)
    worker = start_worker(settings, home / "worker.log", name="dash-test")
    server = Server(settings, home / "api.log").start()
    try:
        yield settings, server.url
    finally:
        server.stop()
        stop(worker)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
            accept_downloads=True,
        )
        context.set_default_timeout(30_000)
        yield context
        context.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    # The wrong key (401) and the deliberately invalid job (422) are expected; nothing else may fail.
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" and not any(f"status of {s} " in msg.text for s in (401, 422)) else None)
    page.problems = problems
    yield page
    page.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def assert_labelled(page: Any) -> None:
    assert page.evaluate(UNLABELLED) == []


def labels_beside_checkboxes(page: Any) -> None:
    """Every checkbox of the form has its label on the same line, just right of it."""
    boxes = page.locator("#new-job-form input[type=checkbox]")
    assert boxes.count() >= 3
    for i in range(boxes.count()):
        box = boxes.nth(i).bounding_box()
        label = page.locator(f"label[for='{boxes.nth(i).get_attribute('id')}']").bounding_box()
        assert box and label, boxes.nth(i).get_attribute("id")
        assert label["y"] < box["y"] + box["height"] and box["y"] < label["y"] + label["height"]  # same line
        wraps = label["x"] <= box["x"] and box["x"] + box["width"] <= label["x"] + label["width"]
        assert wraps or 0 <= label["x"] - (box["x"] + box["width"]) < 40  # around it or right beside it


def sign_in(page: Any, url: str, key: str) -> None:
    page.goto(url + "/")
    page.fill("#api-key", key)
    page.keyboard.press("Enter")
    page.wait_for_selector("#nav:not([hidden])")


def test_dashboard_end_to_end(service: tuple[Settings, str], page: Any, tiny_teacher: Path, tmp_path: Path) -> None:
    from gkd.config import Hyperparameters, StudentSpec

    settings, url = service
    key = new_key(settings)
    headers = {"Authorization": f"Bearer {key}"}
    teacher_id = register_teacher(settings, key, tiny_teacher, name="tiny-teacher")

    # --- sign in: a wrong key is refused, the right one is kept in sessionStorage, never in the URL
    page.goto(url + "/")
    assert page.url.endswith("/dashboard/")
    page.wait_for_selector("#api-key")
    assert page.locator("#nav").is_hidden()
    assert_labelled(page)
    shot(page, "01-sign-in")
    page.fill("#api-key", "gkd_not_a_key")
    page.keyboard.press("Enter")
    page.get_by_role("alert").filter(has_text="not accepted").wait_for()
    page.fill("#api-key", key)
    page.keyboard.press("Enter")  # keyboard only
    page.wait_for_selector("#no-jobs")
    assert page.evaluate("sessionStorage.getItem('gkd.apiKey')") == key
    assert page.evaluate("localStorage.length") == 0

    # --- datasets: upload and read the validation report
    csv_body = csv_bytes(sentiment_rows(48))
    first_row = csv_body.decode().splitlines()[1]
    data_file = tmp_path / "reviews.csv"
    data_file.write_bytes(csv_body + f"{first_row}\n{first_row}\n".encode())
    page.get_by_role("link", name="Datasets").click()
    page.set_input_files("#dataset-file", str(data_file))
    page.fill("#dataset-name", "reviews")
    page.get_by_role("button", name="Upload").click()
    report = page.locator("#upload-result .report")
    report.wait_for()
    dataset = httpx.get(url + "/v1/datasets", headers=headers).json()["data"][0]
    assert dataset["name"] == "reviews" and dataset["validation"]["duplicate_rows"] == 2
    assert report.locator("[data-field=rows]").inner_text() == "50"
    assert report.locator("[data-field=duplicate_rows]").inner_text() == "2"
    counts = dataset["validation"]["label_counts"]
    for label, n in counts.items():
        assert report.locator(f"tr[data-label={label}] td").first.inner_text() == str(n)
    assert "duplicates" in report.inner_text()  # the warning is shown
    page.wait_for_selector(f"#datasets-table tr[data-dataset={dataset['id']}]")
    assert_labelled(page)
    shot(page, "02-datasets")

    # --- new job: the form is generated from /openapi.json, i.e. from gkd.config
    page.get_by_role("link", name="New job").click()
    page.wait_for_selector("#new-job-form")
    # the research-level fields are folded under "Advanced"; the essentials are in view
    advanced = page.locator("#advanced-settings")
    assert advanced.get_attribute("open") is None
    assert page.locator("#f-hyperparameters-epochs").is_visible()
    assert page.locator("#f-student-num_layers").is_visible()
    assert page.locator("#f-hyperparameters-temperature").is_hidden()
    folded = advanced.locator("input, select").count()
    assert folded == len(StudentSpec.model_fields) + len(Hyperparameters.model_fields) - 6
    assert f"({folded} fields, all at their defaults)" in advanced.locator("summary").inner_text()
    advanced.locator("summary").click()
    assert advanced.get_attribute("open") == "" and page.locator("#f-hyperparameters-temperature").is_visible()
    labels_beside_checkboxes(page)
    shot(page, "03-new-job-advanced")
    for prefix, model in (("student", StudentSpec), ("hyperparameters", Hyperparameters)):
        for name, info in model.model_fields.items():
            field = page.locator(f"#f-{prefix}-{name}")
            assert field.count() == 1, f"{prefix}.{name} has no input"
            help_text = page.locator(f"#f-{prefix}-{name}-help").inner_text()
            assert (info.description or "")[:40] in help_text
    epochs = page.locator("#f-hyperparameters-epochs")
    assert epochs.get_attribute("min") == "1" and epochs.get_attribute("max") == "100"
    assert epochs.input_value() == "4"
    assert float(page.locator("#f-hyperparameters-learning_rate").input_value()) == 1e-4
    assert page.locator("#f-hyperparameters-length_bucketing").is_checked()
    assert page.locator("#f-student-hidden_size").input_value() == ""
    assert_labelled(page)
    page.select_option("#f-teacher", teacher_id)
    page.select_option("#f-training_dataset", dataset["id"])
    page.fill("#f-name", "dashboard-e2e")
    page.fill("#f-hyperparameters-epochs", "1")
    page.fill("#f-hyperparameters-batch_size", "8")
    page.fill("#f-hyperparameters-max_length", "16")
    # A check only the server can make (the teacher has 2 layers) lands on the field it names.
    page.fill("#f-student-num_layers", "3")
    page.click("#submit-job")
    page.get_by_role("alert").filter(has_text="cannot be deeper").wait_for()
    assert page.locator("#f-student-num_layers").get_attribute("aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == "f-student-num_layers"
    page.fill("#f-student-num_layers", "1")
    page.fill("#f-hyperparameters-seed", "7")  # an advanced field
    beta = page.locator("#f-hyperparameters-beta")  # a number or "auto": a text input suggesting "auto"
    assert beta.input_value() == "1" and page.locator("#f-hyperparameters-beta-options option").get_attribute(
        "value") == "auto"
    page.fill("#f-hyperparameters-beta", "auto")
    advanced.locator("summary").filter(has_text="2 changed").wait_for()
    advanced.locator("summary").click()  # folded again: its fields are still sent
    assert page.locator("#f-hyperparameters-seed").is_hidden()
    jobs_before = httpx.get(f"{url}/v1/jobs", headers=headers).json()["data"]
    page.click("#estimate-job")  # a dry run: the estimate under the form, no job
    page.locator("#job-estimate").filter(has_text="steps;").wait_for()
    assert "cpu: about" in page.locator("#job-estimate").inner_text()
    assert httpx.get(f"{url}/v1/jobs", headers=headers).json()["data"] == jobs_before
    shot(page, "03-new-job")
    with page.expect_request(lambda r: r.url.endswith("/v1/jobs") and r.method == "POST") as submitted:
        page.click("#submit-job")
    sent = submitted.value.post_data_json
    assert set(sent["student"]) == set(StudentSpec.model_fields)
    assert set(sent["hyperparameters"]) == set(Hyperparameters.model_fields)
    assert sent["hyperparameters"]["seed"] == 7 and sent["hyperparameters"]["epochs"] == 1
    assert sent["hyperparameters"]["beta"] == "auto" and sent["hyperparameters"]["learning_rate"] == 1e-4
    page.wait_for_url("**/dashboard/#/jobs/job_*")
    job_id = page.url.rsplit("/", 1)[1]
    assert key not in page.url

    # --- job page: the curve grows from the event stream until the job succeeds
    page.wait_for_selector("#loss-chart-loss")
    page.evaluate("""() => {
        const box = document.getElementById('loss-chart-loss');
        window.__points = [Number(box.dataset.points)];
        new MutationObserver(() => window.__points.push(Number(box.dataset.points)))
            .observe(box, {attributes: true, attributeFilter: ['data-points']});
    }""")
    page.wait_for_selector("#job-status [data-status=succeeded]", timeout=90_000)
    page.wait_for_selector("#checkpoint-table button[data-download=final]")
    page.wait_for_selector("#stream-state[data-state=ended]")
    events = httpx.get(f"{url}/v1/jobs/{job_id}/events?limit=1000", headers=headers).json()["data"]
    train_steps = {e["data"]["step"] for e in events if e["type"] == "metrics" and not e["data"].get("eval")}
    evals = [e for e in events if e["type"] == "metrics" and e["data"].get("eval")]
    assert len(train_steps) >= 3 and evals
    page.wait_for_function(f"document.getElementById('loss-chart-loss').dataset.points === '{len(train_steps)}'")
    observed = page.evaluate("window.__points")
    assert observed == sorted(observed) and observed[-1] == len(train_steps) and len(set(observed)) >= 2, observed
    assert page.locator("#eval-table tbody tr").count() == len(evals)
    assert page.locator("#loss-chart-loss canvas").count() >= 1
    assert page.locator("#event-log li").count() == len(events)
    assert page.locator("#cancel-job").is_hidden()
    assert any(e["type"] == "phase" and e["data"]["phase"] == "teacher_cache" for e in events)
    # two measures, two names: the job's gradient agreement is explained beside its curve
    assert "saliency profile cosine" in page.locator("#gradient-agreement-note").inner_text()
    checkpoint_columns = page.locator("#checkpoint-table thead").inner_text().lower()
    assert "gradient agreement" in checkpoint_columns and "saliency agreement" not in checkpoint_columns
    shot(page, "04-job")

    # --- download the final checkpoint (fetched with the header, saved as a blob)
    checkpoints = httpx.get(f"{url}/v1/jobs/{job_id}/checkpoints", headers=headers).json()["data"]
    final = next(c for c in checkpoints if c["kind"] == "final")
    with page.expect_download() as download_info:
        page.click("#checkpoint-table button[data-download=final]")
    download = download_info.value
    assert download.suggested_filename == f"{job_id}-final.tar.gz"
    saved = tmp_path / download.suggested_filename
    download.save_as(str(saved))
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == final["sha256"]
    with tarfile.open(saved) as archive:
        names = set(archive.getnames())
    assert {"config.json", "model.safetensors", "gkd_card.json"} <= {n.removeprefix("./") for n in names}

    # --- saliency of the final checkpoint
    page.click("#checkpoint-table a[data-saliency=final]")
    page.wait_for_selector(".saliency-example")
    examples = page.locator(".saliency-example")
    assert 1 <= examples.count() <= 5
    first = examples.first
    assert first.locator("[data-model=teacher] .tok").count() == first.locator("[data-model=student] .tok").count()
    assert first.locator("[data-model=student] .tok[data-score]").count() >= 3
    assert "saliency profile cosine" in first.inner_text()
    assert "gradient agreement" in page.locator("#profile-cosine-note").inner_text()  # the other measure, named apart
    assert_labelled(page)
    shot(page, "05-saliency")
    page.fill("#sal-texts", "the film was wonderful")
    page.get_by_role("button", name="Explain texts").click()
    page.locator(".saliency-example").filter(has_text="the film was wonderful").wait_for()

    # --- jobs list with filter
    page.get_by_role("link", name="Jobs").first.click()
    row = page.locator(f"#jobs-table tr[data-job={job_id}]")
    row.wait_for()
    assert row.locator("[data-status]").inner_text() == "succeeded"
    assert row.locator("progress").get_attribute("value") == "1"
    assert "1 layer × 32" in row.inner_text() and "tiny-teacher" in row.inner_text()
    best = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers).json()["metrics"]["best"]["accuracy"]
    assert float(row.locator("[data-field=accuracy]").inner_text()) == pytest.approx(best, abs=1e-4)
    page.select_option("#status-filter", "failed")
    page.wait_for_selector("#no-jobs")
    page.select_option("#status-filter", "succeeded")
    page.locator(f"#jobs-table tr[data-job={job_id}]").wait_for()
    assert_labelled(page)
    page.select_option("#status-filter", "")
    page.locator(f"#jobs-table tr[data-job={job_id}]").wait_for()
    shot(page, "06-jobs")

    # --- cancel a long job from its page
    body = {"teacher": teacher_id, "training_dataset": dataset["id"], "student": {"num_layers": 1},
            "hyperparameters": {"epochs": 100, "batch_size": 8, "max_length": 16}, "name": "to-cancel"}
    long_job = httpx.post(url + "/v1/jobs", headers=headers, json=body).json()
    # The first stream connection drops after event 1: the page reconnects with Last-Event-ID: 1.
    first_event = httpx.get(f"{url}/v1/jobs/{long_job['id']}/events?limit=1", headers=headers).json()["data"][0]
    streams: list[str | None] = []

    def drop_first_stream(route: Any) -> None:
        streams.append(route.request.headers.get("last-event-id"))
        if len(streams) == 1:
            route.fulfill(status=200, headers={"Content-Type": "text/event-stream"},
                          body=f"retry: 100\n\nid: 1\nevent: status\ndata: {json.dumps(first_event)}\n\n")
        else:
            route.continue_()

    page.route(f"**/v1/jobs/{long_job['id']}/events/stream*", drop_first_stream)
    page.goto(f"{url}/dashboard/#/jobs/{long_job['id']}")
    # pause (at once while queued, else once the worker saved the state) and resume, with the buttons by Cancel
    page.get_by_role("button", name="Pause job").click()
    page.wait_for_selector("#job-status [data-status=paused]", timeout=60_000)
    page.wait_for_selector("#resume-job:visible")
    assert page.locator("#pause-job").is_hidden() and page.locator("#cancel-job").is_visible()
    shot(page, "07-paused")
    page.get_by_role("button", name="Resume job").click()
    page.wait_for_selector("#job-status [data-status=running]", timeout=60_000)
    assert page.locator("#resume-job").is_hidden() and page.locator("#pause-job").is_visible()
    page.get_by_role("button", name="Cancel job").click()
    page.wait_for_selector("#job-status [data-status=cancelled]", timeout=60_000)
    page.wait_for_selector("#stream-state[data-state=ended]")
    assert streams[:2] == [None, "1"], streams
    long_events = httpx.get(f"{url}/v1/jobs/{long_job['id']}/events?limit=1000", headers=headers).json()["data"]
    shown = [int(s) for s in page.locator("#event-log li").evaluate_all("els => els.map((e) => e.dataset.seq)")]
    assert sorted(shown) == [e["seq"] for e in long_events]  # nothing lost, nothing twice
    assert long_events[-1]["data"]["status"] == "cancelled"
    statuses = [e["data"]["status"] for e in long_events if e["type"] == "status"]
    assert "paused" in statuses and statuses[statuses.index("paused") + 1] == "queued", statuses

    # --- forgetting the key signs out
    page.get_by_role("button", name="Forget key").click()
    page.wait_for_selector("#api-key")
    assert page.evaluate("sessionStorage.getItem('gkd.apiKey')") is None
    assert page.problems == [], page.problems


def test_loss_terms_have_their_own_charts_and_the_gradient_start_is_marked(
        service: tuple[Settings, str], page: Any, tiny_teacher: Path) -> None:
    """A gradient_kd job whose gradient term starts half-way: total, ce, kd and grad each get a chart of their own
    (own y scale), and every one marks the step the worker announced, with a caption saying what the mark means."""
    settings, url = service
    key = new_key(settings)
    headers = {"Authorization": f"Bearer {key}"}
    teacher_id = register_teacher(settings, key, tiny_teacher, name="tiny-teacher")
    train = httpx.post(url + "/v1/datasets", headers=headers,
                       files={"file": ("train.csv", csv_bytes(sentiment_rows(48)), "text/csv")})
    assert train.status_code == 201, train.text
    # a fixed schedule (no accuracy guard, which a run this short would never open): full weight from half-way
    hyperparameters = {"epochs": 1, "batch_size": 4, "max_length": 16, "accuracy_guard": False,
                       "gradient_start_ratio": 0.5, "gradient_warmup_ratio": 0.0}
    job = httpx.post(url + "/v1/jobs", headers=headers, json={
        "teacher": teacher_id, "training_dataset": train.json()["id"], "method": "gradient_kd",
        "student": {"num_layers": 1}, "hyperparameters": hyperparameters, "name": "gradient-start"}).json()
    sign_in(page, url, key)
    page.goto(f"{url}/dashboard/#/jobs/{job['id']}")
    page.wait_for_selector("#job-status [data-status=succeeded]", timeout=120_000)
    page.wait_for_selector("#stream-state[data-state=ended]")

    events = httpx.get(f"{url}/v1/jobs/{job['id']}/events?limit=1000", headers=headers).json()["data"]
    starts = [e["data"]["step"] for e in events if e["type"] == "log" and e["data"].get("gradient_term_started")]
    assert len(starts) == 1, events
    start = starts[0]
    steps = [e["data"] for e in events if e["type"] == "metrics" and not e["data"].get("eval")]
    assert 1 < start < steps[-1]["step"]  # the term starts mid-run
    for term in ("loss", "ce", "kd", "grad"):
        points = sorted(d["step"] for d in steps if isinstance(d.get(term), float | int))
        chart = page.locator(f"#loss-chart-{term}")
        page.wait_for_function(f"document.getElementById('loss-chart-{term}').dataset.points === '{len(points)}'")
        assert chart.is_visible() and chart.locator("canvas").count() >= 1
        assert chart.locator(".u-legend .u-series").count() == 2  # the step and this one term: its own y scale
        assert chart.get_attribute("data-mark-step") == str(start)
        mark = chart.locator(".chart-mark")
        assert mark.is_visible() and mark.get_attribute("data-step") == str(start)
        # the line stands where the step lies on the chart's x axis
        area = chart.locator(".u-over").bounding_box()
        line = mark.bounding_box()
        assert area and line
        expected = (start - points[0]) / (points[-1] - points[0])
        assert (line["x"] - area["x"]) / area["width"] == pytest.approx(expected, abs=0.03), term
    assert points[0] == start  # the grad term's own chart begins where it starts
    assert page.locator("#loss-chart-pkd").locator("xpath=..").is_hidden()  # gradient_kd has no pkd term
    assert f"step {start}" in page.locator("#gradient-start-note").inner_text()
    assert "not training diverging" in page.locator("#loss-note").inner_text()
    page.locator("#h-curves").scroll_into_view_if_needed()
    shot(page, "07-loss-terms")
def test_webhooks_page(service: tuple[Settings, str], page: Any) -> None:
    """Add an endpoint (a private address is refused with the API's message; the secret is shown once), read its
    delivery log, delete it: keyboard-reachable, every input labelled."""
    settings, url = service
    key = new_key(settings)
    page.goto(url + "/dashboard/")
    page.fill("#api-key", key)
    page.keyboard.press("Enter")
    page.wait_for_selector("#no-jobs")
    page.get_by_role("link", name="Webhooks").click()
    page.wait_for_selector("#webhook-form")
    assert_labelled(page)
    page.fill("#webhook-url", "http://127.0.0.1:9/hooks")
    page.get_by_role("button", name="Add endpoint").click()
    page.get_by_role("alert").filter(has_text="non-public").wait_for()
    page.fill("#webhook-url", "http://93.184.215.14/hooks")
    page.get_by_label("checkpoint.created").check()
    page.get_by_role("button", name="Add endpoint").click()
    secret = page.locator("#webhook-secret code.mono")
    secret.wait_for()
    assert secret.inner_text().startswith("whsec_")
    row = page.locator("#webhooks-table tbody tr")
    row.first.wait_for()  # the list is re-read after the create: wait for it rather than race it
    assert row.count() == 1
    assert "checkpoint.created" in row.inner_text() and "job.succeeded" in row.inner_text()
    webhook_id = row.get_attribute("data-webhook")
    listed = httpx.get(f"{url}/v1/webhooks", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    assert [w["id"] for w in listed] == [webhook_id]
    row.locator("summary").click()
    row.get_by_text("No deliveries yet.").wait_for()
    shot(page, "webhooks")
    page.get_by_role("button", name="Delete webhook http://93.184.215.14/hooks").click()
    page.get_by_text("No endpoints yet.").wait_for()
    assert page.problems == [], page.problems


def test_continue_training_from_a_checkpoint(service: tuple[Settings, str], page: Any, tiny_teacher: Path) -> None:
    """A finished job's checkpoint has a "Continue training" link that opens the new-job form filled in with that
    job's settings and `student.init.checkpoint`; an MLflow experiment on a service without MLflow is refused on its
    field; the continued job runs on the worker from the checkpoint, and the old job is unchanged."""
    settings, url = service
    key = new_key(settings)
    headers = {"Authorization": f"Bearer {key}"}
    teacher_id = register_teacher(settings, key, tiny_teacher, name="tiny-teacher")
    dataset = httpx.post(f"{url}/v1/datasets", headers=headers,
                         files={"file": ("train.csv", csv_bytes(sentiment_rows(32)), "text/csv")}).json()
    body = {"teacher": teacher_id, "training_dataset": dataset["id"], "student": {"num_layers": 1},
            "hyperparameters": {"epochs": 1, "batch_size": 8, "max_length": 16, "seed": 11}, "name": "first"}
    created = httpx.post(f"{url}/v1/jobs", headers=headers, json=body)
    assert created.status_code == 201, created.text
    source_id = created.json()["id"]
    source = wait_for(lambda: (j := httpx.get(f"{url}/v1/jobs/{source_id}", headers=headers).json())["status"]
                      in ("succeeded", "failed") and j, 120, "the first job to finish", interval=0.5)
    assert source["status"] == "succeeded", source["error"]
    checkpoints = httpx.get(f"{url}/v1/jobs/{source_id}/checkpoints", headers=headers).json()["data"]
    best = next(c for c in checkpoints if c["kind"] == "best")

    sign_in(page, url, key)
    page.goto(f"{url}/dashboard/#/jobs/{source_id}")
    link = page.locator("#checkpoint-table a[data-continue=best]")
    link.wait_for()
    assert page.locator("#checkpoint-table a[data-continue]").count() == len(checkpoints)
    link.click()
    page.wait_for_selector("#new-job-form #continue-note")
    assert best["id"] in page.locator("#continue-note").inner_text()
    assert page.locator("#f-student-init").input_value() == best["id"]
    assert page.locator("#f-teacher").input_value() == teacher_id
    assert page.locator("#f-training_dataset").input_value() == dataset["id"]
    assert page.locator("#f-student-num_layers").input_value() == "1"
    assert page.locator("#f-student-hidden_size").input_value() == ""
    assert page.locator("#f-hyperparameters-seed").input_value() == "11"
    assert page.locator("#f-hyperparameters-max_length").input_value() == "16"
    assert_labelled(page)
    shot(page, "08-continue-training")

    # this service has no MLflow server: the experiment is refused on its own field
    page.fill("#f-integrations-0", "gkd-continued")
    page.click("#submit-job")
    page.get_by_role("alert").filter(has_text="MLflow").wait_for()
    assert page.evaluate("document.activeElement.id") == "f-integrations-0"
    page.fill("#f-integrations-0", "")
    page.fill("#f-hyperparameters-epochs", "2")
    with page.expect_request(lambda r: r.url.endswith("/v1/jobs") and r.method == "POST") as submitted:
        page.click("#submit-job")
    sent = submitted.value.post_data_json
    assert sent["student"]["init"] == {"checkpoint": best["id"]} and sent["integrations"] == []
    page.wait_for_url("**/dashboard/#/jobs/job_*")
    continued_id = page.url.rsplit("/", 1)[1]
    assert continued_id != source_id
    page.wait_for_selector("#job-status [data-status=succeeded]", timeout=120_000)
    continued = httpx.get(f"{url}/v1/jobs/{continued_id}", headers=headers).json()
    assert continued["student"]["init"] == {"checkpoint": best["id"]}
    assert continued["hyperparameters"]["epochs"] == 2 and continued["hyperparameters"]["seed"] == 11
    page.locator("dl.facts").filter(has_text=f"Continued from{best['id']}").wait_for()  # the summary says so
    after = httpx.get(f"{url}/v1/jobs/{source_id}/checkpoints", headers=headers).json()["data"]
    assert after == checkpoints  # the old job is unchanged
    assert page.problems == [], page.problems


@pytest.mark.parametrize("path, rendered", [("/docs", ".swagger-ui .opblock-summary-path"),
                                            ("/redoc", ".api-content h2")])
def test_api_docs_render_with_no_network_but_this_server(service: tuple[Settings, str], page: Any, path: str,
                                                         rendered: str) -> None:
    """Swagger UI and ReDoc draw the API from this server's files alone (an air-gapped machine): every request to
    another host is refused, and none is even tried."""
    _settings, url = service
    elsewhere: list[str] = []

    def only_this_server(route: Any) -> None:
        if route.request.url.startswith(url + "/"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_this_server)
    page.goto(url + path)
    page.wait_for_selector(rendered)
    page.get_by_text("/v1/jobs/{job_id}/events/stream").first.wait_for()
    assert elsewhere == [] and page.problems == []
    shot(page, f"api-docs-{path.strip('/')}")
