"""The README's Python snippet, run as written against a real API server: when its job is cancelled the loop
ends, the snippet prints the status and exits 0 (issue 21, item 3: it used to end in a bare StopIteration)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gkd import client as gc
from tests.client.conftest import write_rows
from tests.support.factories import make_tiny_teacher
from tests.support.servers import Server
from tests.support.service import register_teacher

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_client_snippet() -> str:
    """The README's ```python block that uses the HTTP client, verbatim."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    matches = [block for block in blocks if "from gkd.client import Client" in block]
    assert len(matches) == 1, "the README should have exactly one client snippet"
    return matches[0]


def cancel_first_job(client: gc.Client, stop: threading.Event, cancelled: list[str]) -> None:
    """Cancel the tenant's first job as soon as the snippet has created it (no worker runs, so it stays queued)."""
    while not stop.wait(0.1):
        jobs = list(client.jobs.list())
        if jobs:
            cancelled.append(client.jobs.cancel(jobs[0].id).status)
            return


def test_readme_snippet_ends_cleanly_when_its_job_is_cancelled(client: gc.Client, server: Server, api_key: str,
                                                             tmp_path: Path) -> None:
    teacher = make_tiny_teacher(tmp_path / "teacher", num_layers=3)  # the snippet cuts a 3-layer student
    register_teacher(server.settings, api_key, teacher, name="example-teacher")
    data = tmp_path / "var/data/movie_reviews"
    data.mkdir(parents=True)
    write_rows(data / "train.csv", 16)
    script = tmp_path / "snippet.py"
    script.write_text(readme_client_snippet(), encoding="utf-8")
    stop, cancelled = threading.Event(), []
    canceller = threading.Thread(target=cancel_first_job, args=(client, stop, cancelled), daemon=True)
    canceller.start()
    env = {name: value for name, value in os.environ.items() if name not in ("GKD_URL", "GKD_KEY")}
    env.update(GKD_BASE_URL=server.url, GKD_API_KEY=api_key)
    try:
        run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120)
    finally:
        stop.set()
        canceller.join(timeout=10)
    assert cancelled == ["cancelled"], run.stdout + run.stderr
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert run.stdout.splitlines()[-1].startswith("cancelled")
    assert not (tmp_path / "student").exists()
