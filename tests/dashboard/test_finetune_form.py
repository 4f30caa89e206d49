"""The dashboard's new-job form offers `finetune` (its method menu comes from the schema): choosing it lists base
encoders as the model to fine-tune, folds the student fields away, and the job it submits makes a teacher that
the job page names. Headless Chromium against a real API server and worker (tests/dashboard/test_browser.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from app.store.settings import Settings
from tests.dashboard import test_browser as browser_tests
from tests.support.factories import make_tiny_base_encoder
from tests.support.service import new_key, register_teacher

pytestmark = browser_tests.pytestmark

# The real server, worker and browser of test_browser.py (fixtures `service`, `browser` and `page`).
service, browser, page = browser_tests.service, browser_tests.browser, browser_tests.page


def test_the_form_submits_a_finetune_job(service: tuple[Settings, str], page: Any, tiny_teacher: Path,
                                         tmp_path: Path) -> None:
    settings, url = service
    key = new_key(settings)
    headers = {"Authorization": f"Bearer {key}"}
    register_teacher(settings, key, tiny_teacher, name="tiny-teacher")
    base = register_teacher(settings, key, make_tiny_base_encoder(tmp_path / "base"), name="tiny-base")
    dataset = browser_tests.csv_bytes(browser_tests.sentiment_rows(48))
    train = httpx.post(url + "/v1/datasets", headers=headers, files={"file": ("train.csv", dataset)}).json()["id"]

    browser_tests.sign_in(page, url, key)
    page.goto(url + "/#/new")
    page.wait_for_selector("#new-job-form")
    options = lambda: page.locator("#f-teacher option").evaluate_all("els => els.map((e) => e.value)")  # noqa: E731
    assert base not in options()  # a bare encoder cannot teach a distillation
    assert "finetune" in page.locator("#f-method option").evaluate_all("els => els.map((e) => e.value)")
    page.select_option("#f-method", "finetune")
    assert base in options() and page.locator("#fs-student").is_hidden()
    assert page.locator("#submit-job").inner_text() == "Start fine-tuning"
    page.select_option("#f-teacher", base)
    page.select_option("#f-training_dataset", train)
    page.fill("#f-hyperparameters-epochs", "1")
    page.fill("#f-hyperparameters-batch_size", "8")
    page.fill("#f-hyperparameters-max_length", "16")
    page.locator("#submit-job").click()
    page.wait_for_url("**#/jobs/job_*")
    job_id = page.url.rsplit("/", 1)[-1]
    job = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers).json()
    assert job["method"] == "finetune" and job["teacher"] == base and job["student"]["num_layers"] == 2
    page.locator("#fine-tuned-model").wait_for(timeout=120_000)  # the job page names the model it made
    made = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers).json()["fine_tuned_model"]
    assert made and page.locator("#fine-tuned-model").inner_text() == made
    browser_tests.shot(page, "finetune-job")
