"""`Client`: the synchronous client and its resources."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx

from gkd.client import _common as c
from gkd.client._archive import safe_extract
from gkd.client._http import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, SyncHTTP, backoff
from gkd.client.errors import (
    APIConnectionError,
    ChecksumError,
    RateLimitError,
    ServerError,
    WaitTimeoutError,
)
from gkd.client.models import (
    Checkpoint,
    Dataset,
    Deleted,
    Job,
    JobEstimate,
    JobEvent,
    Model,
    Page,
    Webhook,
    WebhookDelivery,
)
from gkd.client.sse import SSEDecoder

T = TypeVar("T")


class SyncPager(Generic[T]):
    """Iterates over every item of a list endpoint, fetching the next page as needed (lazily: nothing is
    requested before iteration starts). `.pages()` iterates page by page."""

    def __init__(self, fetch: Callable[[str | None], Page[T]], after: str | None = None) -> None:
        self._fetch = fetch
        self._after = after

    def pages(self) -> Iterator[Page[T]]:
        cursor = self._after
        while True:
            page = self._fetch(cursor)
            yield page
            if not page.has_more or not page.next_cursor:
                return
            cursor = page.next_cursor

    def __iter__(self) -> Iterator[T]:
        for page in self.pages():
            yield from page.data

    def first_page(self) -> Page[T]:
        return next(iter(self.pages()))

    def to_list(self) -> list[T]:
        return list(self)


class _Resource:
    def __init__(self, client: Client) -> None:
        self._client = client
        self._http = client._http

    def _page(self, path: str, item: type[T], params: dict[str, Any]) -> Callable[[str | None], Page[T]]:
        def fetch(cursor: str | None) -> Page[T]:
            body = self._http.json("GET", path, params={**params, "after": cursor})
            return Page[item].model_validate(body)  # type: ignore[valid-type]

        return fetch


class Datasets(_Resource):
    def upload(self, path_or_dataframe: Any, name: str | None = None) -> Dataset:
        """Upload a CSV/TSV/JSONL/Parquet file, or a pandas DataFrame (sent as JSONL)."""
        with ExitStack() as stack:
            path, filename = c.dataset_source(path_or_dataframe, name, stack)
            handle = stack.enter_context(open(path, "rb"))
            files = {"file": (filename, handle, c.content_type(filename))}
            data = {"name": name} if name else None
            body = self._http.json("POST", "/v1/datasets", files=files, data=data)
        return Dataset.model_validate(body)

    def list(self, *, limit: int | None = None, after: str | None = None) -> SyncPager[Dataset]:
        return SyncPager(self._page("/v1/datasets", Dataset, {"limit": limit}), after)

    def get(self, dataset_id: str) -> Dataset:
        return Dataset.model_validate(self._http.json("GET", f"/v1/datasets/{c.ident(dataset_id)}"))

    def delete(self, dataset_id: str) -> Deleted:
        return Deleted.model_validate(self._http.json("DELETE", f"/v1/datasets/{c.ident(dataset_id)}"))


class Models(_Resource):
    def list(self, *, limit: int | None = None, after: str | None = None) -> SyncPager[Model]:
        return SyncPager(self._page("/v1/models", Model, {"limit": limit}), after)

    def get(self, model_id: str) -> Model:
        return Model.model_validate(self._http.json("GET", f"/v1/models/{c.ident(model_id)}"))

    def delete(self, model_id: str) -> None:
        """Delete one of your models with its files (ConflictError while an unfinished job uses it; NotFoundError
        for a global model). Finished jobs that used it keep their results."""
        self._http.request("DELETE", f"/v1/models/{c.ident(model_id)}").close()

    def upload(self, archive_or_dir: str | os.PathLike[str], name: str | None = None) -> Model:
        """Upload a .tar.gz/.zip of a Hugging Face model directory, or the directory itself (packed on the fly)."""
        with ExitStack() as stack:
            path, filename = c.model_source(Path(archive_or_dir), stack)
            handle = stack.enter_context(open(path, "rb"))
            files = {"file": (filename, handle, "application/octet-stream")}
            data = {"name": name} if name else None
            body = self._http.json("POST", "/v1/models", files=files, data=data)
        return Model.model_validate(body)

    def find(self, name_or_id: str) -> Model:
        """A model by id, or by name among the models you can see (newest first)."""
        return c.find_model(name_or_id, self.get, self.list())


class Jobs(_Resource):
    def create(
        self,
        *,
        teacher: str,
        training_dataset: str,
        method: str = "gradient_kd",
        student: Mapping[str, Any] | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        validation_dataset: str | None = None,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        export: Sequence[str] | None = None,
        device: str | None = None,
        integrations: Sequence[Mapping[str, Any]] | None = None,
    ) -> Job:
        """Submit a job. Without `idempotency_key` a random one is sent, so a retried request never creates
        a second job. `export`: "onnx", "onnx-int8" (extra checkpoints
        best-onnx, best-onnx-int8)."""
        body = c.job_body(teacher, training_dataset, method, student, hyperparameters, validation_dataset,
                          name, metadata, export, device, integrations)
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        return Job.model_validate(self._http.json("POST", "/v1/jobs", json=body, headers=headers))

    def estimate(
        self,
        *,
        teacher: str,
        training_dataset: str,
        method: str = "gradient_kd",
        student: Mapping[str, Any] | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        validation_dataset: str | None = None,
        export: Sequence[str] | None = None,
        device: str | None = None,
        integrations: Sequence[Mapping[str, Any]] | None = None,
    ) -> JobEstimate:
        """What `create` with these arguments would train: total steps, whether the teacher cache exists and
        the estimated seconds per worker kind. Checked like a create (same errors); nothing is stored."""
        body = c.job_body(teacher, training_dataset, method, student, hyperparameters, validation_dataset,
                          None, None, export, device, integrations)
        return JobEstimate.model_validate(self._http.json("POST", "/v1/jobs", json=body,
                                                                params={"dry_run": "true"}))

    def list(self, *, status: str | None = None, limit: int | None = None,
             after: str | None = None) -> SyncPager[Job]:
        return SyncPager(self._page("/v1/jobs", Job, {"status": status, "limit": limit}), after)

    def get(self, job_id: str) -> Job:
        return Job.model_validate(self._http.json("GET", f"/v1/jobs/{c.ident(job_id)}"))

    def cancel(self, job_id: str) -> Job:
        return Job.model_validate(self._http.json("POST", f"/v1/jobs/{c.ident(job_id)}/cancel"))

    def pause(self, job_id: str) -> Job:
        """Pause a queued job at once, or a running one once its worker saved the training state (`pausing`, then
        `paused`). ConflictError when it finished or is being cancelled."""
        return Job.model_validate(self._http.json("POST", f"/v1/jobs/{c.ident(job_id)}/pause"))

    def resume(self, job_id: str) -> Job:
        """Queue a paused job again; it continues from where it stopped. ConflictError unless it is paused."""
        return Job.model_validate(self._http.json("POST", f"/v1/jobs/{c.ident(job_id)}/resume"))

    def delete(self, job_id: str) -> Deleted:
        """Delete a finished job with its events, checkpoints and files (ConflictError while it is active)."""
        return Deleted.model_validate(self._http.json("DELETE", f"/v1/jobs/{c.ident(job_id)}"))

    def metrics_csv(self, job_id: str, dest: str | os.PathLike[str] | None = None) -> str:
        """Every step's and evaluation's metrics as CSV text; with `dest`, also written there (atomically)."""
        parts: list[str] = []
        with self._http.stream("GET", f"/v1/jobs/{c.ident(job_id)}/metrics.csv") as response:
            for text in response.iter_text():
                parts.append(text)
        body = "".join(parts)
        if dest is not None:
            c.write_text_atomic(Path(dest), body)
        return body

    def wait(self, job_id: str, timeout: float | None = None, poll_interval: float = 2.0) -> Job:
        """Poll until the job is `succeeded`, `failed` or `cancelled`; return it. Raises WaitTimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.is_terminal:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(f"job {job.id} is still {job.status!r} after {timeout} s")
            pause = poll_interval if deadline is None else min(poll_interval, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)

    def events(self, job_id: str, after: int | None = None, *, limit: int | None = None) -> SyncPager[JobEvent]:
        """Every event after seq `after`, in order (auto-paginating)."""
        path = f"/v1/jobs/{c.ident(job_id)}/events"
        return SyncPager(self._page(path, JobEvent, {"limit": limit}), None if after is None else str(after))

    def stream(self, job_id: str, last_event_id: int | str | None = None, *,
               max_reconnects: int = c.MAX_RECONNECTS) -> Iterator[JobEvent]:
        """Follow the job's Server-Sent Events until its terminal status event. A dropped connection (or a
        restarted server) is reconnected with `Last-Event-ID`, so no event is lost or repeated; after
        `max_reconnects` consecutive attempts without a new event, APIConnectionError is raised."""
        job_id = c.ident(job_id)
        last = None if last_event_id is None else int(last_event_id)
        failures = 0
        while True:
            progressed = False
            error: Exception | None = None
            headers = {} if last is None else {"Last-Event-ID": str(last)}
            try:
                with self._http.stream("GET", f"/v1/jobs/{job_id}/events/stream", headers=headers,
                                       timeout=c.stream_timeout(self._http.timeout), retries=0) as response:
                    decoder = SSEDecoder()
                    for line in response.iter_lines():
                        message = decoder.decode(line)
                        if message is None:
                            continue
                        event = JobEvent.model_validate(json.loads(message.data))
                        if last is not None and event.seq <= last:
                            continue
                        last, progressed, failures = event.seq, True, 0
                        yield event
                        if event.is_terminal:
                            return
            except (httpx.TransportError, APIConnectionError, ServerError, RateLimitError) as exc:
                error = exc
            if error is None and not progressed and c.finished(self.get, job_id):
                return  # resumed after the terminal event: nothing more will come
            if not progressed:
                failures += 1
                if failures > max_reconnects:
                    raise APIConnectionError(f"event stream of {job_id} broke {failures} times in a row: {error}")
            time.sleep(backoff(max(failures - 1, 0)) if failures else 0.05)


class Checkpoints(_Resource):
    def list(self, job_id: str) -> SyncPager[Checkpoint]:
        return SyncPager(self._page(f"/v1/jobs/{c.ident(job_id)}/checkpoints", Checkpoint, {}))

    def get(self, job_id: str, checkpoint_id: str) -> Checkpoint:
        path = f"/v1/jobs/{c.ident(job_id)}/checkpoints/{c.ident(checkpoint_id)}"
        return Checkpoint.model_validate(self._http.json("GET", path))

    def download(self, job_id: str, checkpoint_id: str, dest_dir: str | os.PathLike[str],
                 verify: bool = True, progress: c.DownloadProgress | None = None) -> Path:
        """Download a checkpoint (.tar.gz), check its sha256 and unpack it into `dest_dir` (created), refusing
        links and paths that leave it. Returns `dest_dir`, a Hugging Face model directory.

        `progress(received_bytes, total_bytes_or_None)` is called as the bytes arrive (from 0 again if a
        broken download is retried), e.g. to drive a progress bar."""
        dest = Path(dest_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        path = f"/v1/jobs/{c.ident(job_id)}/checkpoints/{c.ident(checkpoint_id)}/content"
        fd, tmp_name = tempfile.mkstemp(prefix=".gkd-download-", suffix=".tar.gz", dir=dest.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            attempt = 0
            while True:
                digest = hashlib.sha256()
                try:
                    with self._http.stream("GET", path) as response, open(tmp, "wb") as handle:
                        expected = response.headers.get("x-checksum-sha256")
                        count = c.progress_counter(progress, response)
                        for chunk in response.iter_bytes(1 << 20):
                            digest.update(chunk)
                            handle.write(chunk)
                            count(len(chunk))
                    break
                except httpx.TransportError as exc:
                    if attempt >= self._http.max_retries:
                        raise APIConnectionError(f"download of {checkpoint_id} broke: {exc}") from exc
                    time.sleep(backoff(attempt))
                    attempt += 1
            if verify:
                if not expected:
                    expected = self.get(job_id, checkpoint_id).sha256
                if expected and digest.hexdigest() != expected.lower():
                    raise ChecksumError(f"checkpoint {checkpoint_id}: sha256 {digest.hexdigest()} != {expected}")
            return safe_extract(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)


class Webhooks(_Resource):
    def create(self, url: str, event_types: Sequence[str], *, description: str | None = None) -> Webhook:
        """Register an endpoint for `event_types` (job.queued, job.running, job.succeeded, job.failed,
        job.cancelled, job.paused, checkpoint.created). The result's `secret` is shown only this once."""
        body = {"url": url, "event_types": list(event_types), "description": description}
        return Webhook.model_validate(self._http.json("POST", "/v1/webhooks", json=body))

    def list(self, *, limit: int | None = None, after: str | None = None) -> SyncPager[Webhook]:
        return SyncPager(self._page("/v1/webhooks", Webhook, {"limit": limit}), after)

    def get(self, webhook_id: str) -> Webhook:
        return Webhook.model_validate(self._http.json("GET", f"/v1/webhooks/{c.ident(webhook_id)}"))

    def delete(self, webhook_id: str) -> Deleted:
        return Deleted.model_validate(self._http.json("DELETE", f"/v1/webhooks/{c.ident(webhook_id)}"))

    def deliveries(self, webhook_id: str, *, limit: int | None = None,
                   after: str | None = None) -> SyncPager[WebhookDelivery]:
        """The delivery log, newest first: status, attempts, last response status, latency and error."""
        path = f"/v1/webhooks/{c.ident(webhook_id)}/deliveries"
        return SyncPager(self._page(path, WebhookDelivery, {"limit": limit}), after)


class Client:
    """Synchronous client of the gkd service.

    >>> client = Client()                       # GKD_BASE_URL / GKD_API_KEY, or the arguments
    >>> job = client.jobs.create(teacher="mdl_...", training_dataset="ds_...")
    >>> for event in client.jobs.stream(job.id): print(event.type, event.message)
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT, max_retries: int = DEFAULT_MAX_RETRIES,
                 transport: httpx.BaseTransport | None = None, headers: Mapping[str, str] | None = None) -> None:
        self._http = SyncHTTP(base_url, api_key, timeout=timeout, max_retries=max_retries, transport=transport,
                              headers=headers)
        self.datasets = Datasets(self)
        self.models = Models(self)
        self.jobs = Jobs(self)
        self.checkpoints = Checkpoints(self)
        self.webhooks = Webhooks(self)

    @property
    def base_url(self) -> str:
        return self._http.base_url

    @property
    def api_key(self) -> str | None:
        return self._http.api_key

    @property
    def timeout(self) -> Any:
        return self._http.timeout

    @property
    def max_retries(self) -> int:
        return self._http.max_retries

    def health(self) -> dict[str, Any]:
        return self._http.json("GET", "/healthz")

    def ready(self) -> dict[str, Any]:
        return self._http.json("GET", "/readyz")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(base_url={self.base_url!r})"



