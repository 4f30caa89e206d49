"""Helpers shared by the sync and async clients (no I/O on the network here)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from gkd.client._archive import pack_directory
from gkd.client.errors import APIConnectionError, NotFoundError, RateLimitError, ServerError
from gkd.client.models import Model

MAX_RECONNECTS = 10
STREAM_READ_TIMEOUT = 60.0  # the server sends a keep-alive comment every 15 s

_CONTENT_TYPES = {".csv": "text/csv", ".tsv": "text/tab-separated-values", ".jsonl": "application/x-ndjson",
                  ".json": "application/json", ".parquet": "application/vnd.apache.parquet"}


DownloadProgress = Callable[[int, int | None], None]
"""`progress(received_bytes, total_bytes)` of a checkpoint download; the total is None when the server
sends no Content-Length."""


def progress_counter(progress: DownloadProgress | None, response: httpx.Response) -> Callable[[int], None]:
    """Reports 0 bytes of the announced body size (Content-Length, else None) to `progress` now, and returns
    `add(n)`, which reports each further chunk; without `progress` it does nothing."""
    if progress is None:
        return lambda _n: None
    try:
        total: int | None = int(response.headers["content-length"])
    except (KeyError, ValueError):
        total = None
    received = 0
    progress(received, total)

    def add(n: int) -> None:
        nonlocal received
        received += n
        progress(received, total)

    return add


def ident(value: Any) -> str:
    """An id from a string or from a resource object (anything with `.id`), safe to put in a URL path."""
    raw = getattr(value, "id", value)
    if not isinstance(raw, str) or not raw:
        raise ValueError(f"expected an id string, got {value!r}")
    return quote(raw, safe="")


def content_type(filename: str) -> str:
    return _CONTENT_TYPES.get(Path(filename).suffix.lower(), "application/octet-stream")


def is_dataframe(value: Any) -> bool:
    """True for a pandas DataFrame, without importing pandas."""
    module = type(value).__module__ or ""
    return module.split(".")[0] == "pandas" and hasattr(value, "to_json") and hasattr(value, "columns")


def dataset_source(value: Any, name: str | None, stack: ExitStack) -> tuple[Path, str]:
    """(local path, filename to send). A DataFrame is written to a temporary JSONL file, removed on exit."""
    if is_dataframe(value):
        fd, tmp = tempfile.mkstemp(prefix="gkd-dataframe-", suffix=".jsonl")
        os.close(fd)
        stack.callback(lambda: Path(tmp).unlink(missing_ok=True))
        value.to_json(tmp, orient="records", lines=True, force_ascii=False)
        stem = Path(name).stem if name else "dataframe"
        return Path(tmp), f"{stem or 'dataframe'}.jsonl"
    if isinstance(value, str | os.PathLike):
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        return path, path.name
    raise TypeError(f"upload expects a file path or a pandas DataFrame, got {type(value).__name__}")


def model_source(path: Path, stack: ExitStack) -> tuple[Path, str]:
    if path.is_dir():
        packed = pack_directory(path)
        stack.callback(lambda: packed.unlink(missing_ok=True))
        return packed, f"{path.resolve().name or 'model'}.tar.gz"
    if path.is_file():
        return path, path.name
    raise FileNotFoundError(f"no such file or directory: {path}")


def find_model(name_or_id: str, get: Callable[[str], Model], models: Iterable[Model]) -> Model:
    if name_or_id.startswith("mdl_"):
        return get(name_or_id)
    for model in models:
        if model.name == name_or_id:
            return model
    raise NotFoundError(f"no model named {name_or_id!r}", status_code=404, type="not_found_error",
                        code="resource_missing", param="teacher")


def job_body(teacher: Any, training_dataset: Any, method: str, student: Mapping[str, Any] | None,
             hyperparameters: Mapping[str, Any] | None, validation_dataset: Any, name: str | None,
             metadata: Mapping[str, Any] | None, export: Sequence[str] | None = None,
             device: str | None = None, integrations: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "teacher": getattr(teacher, "id", teacher),
        "training_dataset": getattr(training_dataset, "id", training_dataset),
        "method": method,
    }
    if student is not None:
        body["student"] = dict(student)
    if hyperparameters is not None:
        body["hyperparameters"] = dict(hyperparameters)
    if validation_dataset is not None:
        body["validation_dataset"] = getattr(validation_dataset, "id", validation_dataset)
    if name is not None:
        body["name"] = name
    if metadata is not None:
        body["metadata"] = dict(metadata)
    if export:
        body["export"] = list(export)
    if device is not None:
        body["device"] = device
    if integrations:
        body["integrations"] = [dict(entry) for entry in integrations]
    return body


def finished(get: Callable[[str], Any], job_id: str) -> bool:
    """Whether the job is terminal; False when that cannot be told right now."""
    try:
        return bool(get(job_id).is_terminal)
    except (APIConnectionError, ServerError, RateLimitError):
        return False


def stream_timeout(timeout: Any) -> httpx.Timeout:
    """The client's timeout for connecting, but a read timeout long enough for the keep-alive interval."""
    connect = timeout.connect if isinstance(timeout, httpx.Timeout) else timeout
    return httpx.Timeout(connect, read=STREAM_READ_TIMEOUT)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` under a temporary name beside `path`, then rename: a broken download leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
