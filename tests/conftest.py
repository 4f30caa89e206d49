"""Shared test set-up: offline Hugging Face, one CPU thread (the machines are shared), and the session fixtures
several areas use: a tiny real teacher, and the migrated SQLite and PostgreSQL databases of the service tests.
Helpers live in tests/support/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The suite's requests come from a few keys at machine speed: a limit no test reaches (tests/service/test_capacity.py
# sets its own), while the rate limiter still runs in front of every request.
os.environ.setdefault("GKD_RATE_LIMIT", "100000/second")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT classifier saved as users upload it (tests.support.factories.make_tiny_teacher)."""
    from tests.support.factories import make_tiny_teacher

    return make_tiny_teacher(tmp_path_factory.mktemp("teacher") / "tiny")


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    from app.store.db import upgrade

    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'gkd.db'}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def postgresql_url() -> Iterator[str]:
    """A migrated database of its own on the machine's PostgreSQL, dropped at the end of the session."""
    from tests.support.postgres import temporary_postgres_database
    from tests.support.service import PG_SERVER, reachable

    if not reachable(5432):
        pytest.skip("PostgreSQL is not listening on 127.0.0.1:5432")
    with temporary_postgres_database(PG_SERVER, prefix="gkd_test") as url:
        yield url
