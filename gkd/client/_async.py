"""`AsyncClient`: the same surface as `Client`, with coroutines and async iterators."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx

from gkd.client import _common as c
from gkd.client._archive import safe_extract
from gkd.client._http import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, AsyncHTTP, backoff
from gkd.client.errors import APIConnectionError, ChecksumError, RateLimitError, ServerError, WaitTimeoutError
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


class AsyncPager(Generic[T]):
    """`async for item in client.datasets.list()`: every item, fetching pages lazily."""

    def __init__(self, fetch: Callable[[str | None], Awaitable[Page[T]]], after: str | None = None) -> None:
        self._fetch = fetch
        self._after = after

    async def pages(self) -> AsyncIterator[Page[T]]:
        cursor = self._after
        while True:
            page = await self._fetch(cursor)
            yield page
            if not page.has_more or not page.next_cursor:
                return
            cursor = page.next_cursor

    async def __aiter__(self) -> AsyncIterator[T]:
        async for page in self.pages():
            for item in page.data:
                yield item

    async def first_page(self) -> Page[T]:
        return await self._fetch(self._after)

    async def to_list(self) -> list[T]:
        return [item async for item in self]


class _AsyncResource:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._http = client._http

    def _page(self, path: str, item: type[T], params: dict[str, Any]) -> Callable[[str | None], Awaitable[Page[T]]]:
        async def fetch(cursor: str | None) -> Page[T]:
            body = await self._http.json("GET", path, params={**params, "after": cursor})
            return Page[item].model_validate(body)  # type: ignore[valid-type]

        return fetch


class AsyncDatasets(_AsyncResource):
    async def upload(self, path_or_dataframe: Any, name: str | None = None) -> Dataset:
        with ExitStack() as stack:
            path, filename = c.dataset_source(path_or_dataframe, name, stack)
            handle = stack.enter_context(open(path, "rb"))
            files = {"file": (filename, handle, c.content_type(filename))}
            data = {"name": name} if name else None
            body = await self._http.json("POST", "/v1/datasets", files=files, data=data)
        return Dataset.model_validate(body)

    def list(self, *, limit: int | None = None, after: str | None = None) -> AsyncPager[Dataset]:
        return AsyncPager(self._page("/v1/datasets", Dataset, {"limit": limit}), after)

    async def get(self, dataset_id: str) -> Dataset:
        return Dataset.model_validate(await self._http.json("GET", f"/v1/datasets/{c.ident(dataset_id)}"))

    async def delete(self, dataset_id: str) -> Deleted:
        return Deleted.model_validate(await self._http.json("DELETE", f"/v1/datasets/{c.ident(dataset_id)}"))


class AsyncModels(_AsyncResource):
    def list(self, *, limit: int | None = None, after: str | None = None) -> AsyncPager[Model]:
        return AsyncPager(self._page("/v1/models", Model, {"limit": limit}), after)

    async def get(self, model_id: str) -> Model:
        return Model.model_validate(await self._http.json("GET", f"/v1/models/{c.ident(model_id)}"))

    async def delete(self, model_id: str) -> None:
        """Delete one of your models with its files (ConflictError while an unfinished job uses it; NotFoundError
        for a global model). Finished jobs that used it keep their results."""
        response = await self._http.request("DELETE", f"/v1/models/{c.ident(model_id)}")
        await response.aclose()

    async def upload(self, archive_or_dir: str | os.PathLike[str], name: str | None = None) -> Model:
        with ExitStack() as stack:
            path, filename = c.model_source(Path(archive_or_dir), stack)
            handle = stack.enter_context(open(path, "rb"))
            files = {"file": (filename, handle, "application/octet-stream")}
            data = {"name": name} if name else None
            body = await self._http.json("POST", "/v1/models", files=files, data=data)
        return Model.model_validate(body)

    async def find(self, name_or_id: str) -> Model:
        if name_or_id.startswith("mdl_"):
            return await self.get(name_or_id)
        async for model in self.list():
            if model.name == name_or_id:
                return model
        return c.find_model(name_or_id, self._missing, [])

    @staticmethod
    def _missing(name_or_id: str) -> Model:  # pragma: no cover - find_model only calls it for mdl_ ids
        raise AssertionError(name_or_id)


class AsyncJobs(_AsyncResource):
    async def create(
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
        body = c.job_body(teacher, training_dataset, method, student, hyperparameters, validation_dataset,
                          name, metadata, export, device, integrations)
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        return Job.model_validate(await self._http.json("POST", "/v1/jobs", json=body, headers=headers))

    async def estimate(
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
        return JobEstimate.model_validate(await self._http.json("POST", "/v1/jobs", json=body,
                                                                params={"dry_run": "true"}))

    def list(self, *, status: str | None = None, limit: int | None = None,
             after: str | None = None) -> AsyncPager[Job]:
        return AsyncPager(self._page("/v1/jobs", Job, {"status": status, "limit": limit}), after)

    async def get(self, job_id: str) -> Job:
        return Job.model_validate(await self._http.json("GET", f"/v1/jobs/{c.ident(job_id)}"))

    async def cancel(self, job_id: str) -> Job:
        return Job.model_validate(await self._http.json("POST", f"/v1/jobs/{c.ident(job_id)}/cancel"))

    async def pause(self, job_id: str) -> Job:
        """See `Client.jobs.pause`."""
        return Job.model_validate(await self._http.json("POST", f"/v1/jobs/{c.ident(job_id)}/pause"))

    async def resume(self, job_id: str) -> Job:
        """See `Client.jobs.resume`."""
        return Job.model_validate(await self._http.json("POST", f"/v1/jobs/{c.ident(job_id)}/resume"))

    async def delete(self, job_id: str) -> Deleted:
        return Deleted.model_validate(await self._http.json("DELETE", f"/v1/jobs/{c.ident(job_id)}"))

    async def metrics_csv(self, job_id: str, dest: str | os.PathLike[str] | None = None) -> str:
        parts: list[str] = []
        async with self._http.stream("GET", f"/v1/jobs/{c.ident(job_id)}/metrics.csv") as response:
            async for text in response.aiter_text():
                parts.append(text)
        body = "".join(parts)
        if dest is not None:
            c.write_text_atomic(Path(dest), body)
        return body

    async def wait(self, job_id: str, timeout: float | None = None, poll_interval: float = 2.0) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = await self.get(job_id)
            if job.is_terminal:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(f"job {job.id} is still {job.status!r} after {timeout} s")
            pause = poll_interval if deadline is None else min(poll_interval, max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(pause)

    def events(self, job_id: str, after: int | None = None, *, limit: int | None = None) -> AsyncPager[JobEvent]:
        path = f"/v1/jobs/{c.ident(job_id)}/events"
        return AsyncPager(self._page(path, JobEvent, {"limit": limit}), None if after is None else str(after))

    async def _finished(self, job_id: str) -> bool:
        try:
            return (await self.get(job_id)).is_terminal
        except (APIConnectionError, ServerError, RateLimitError):
            return False

    async def stream(self, job_id: str, last_event_id: int | str | None = None, *,
                     max_reconnects: int = c.MAX_RECONNECTS) -> AsyncIterator[JobEvent]:
        job_id = c.ident(job_id)
        last = None if last_event_id is None else int(last_event_id)
        failures = 0
        while True:
            progressed = False
            error: Exception | None = None
            headers = {} if last is None else {"Last-Event-ID": str(last)}
            try:
                async with self._http.stream("GET", f"/v1/jobs/{job_id}/events/stream", headers=headers,
                                             timeout=c.stream_timeout(self._http.timeout), retries=0) as response:
                    decoder = SSEDecoder()
                    async for line in response.aiter_lines():
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
            if error is None and not progressed and await self._finished(job_id):
                return
            if not progressed:
                failures += 1
                if failures > max_reconnects:
                    raise APIConnectionError(f"event stream of {job_id} broke {failures} times in a row: {error}")
            await asyncio.sleep(backoff(max(failures - 1, 0)) if failures else 0.05)


class AsyncCheckpoints(_AsyncResource):
    def list(self, job_id: str) -> AsyncPager[Checkpoint]:
        return AsyncPager(self._page(f"/v1/jobs/{c.ident(job_id)}/checkpoints", Checkpoint, {}))

    async def get(self, job_id: str, checkpoint_id: str) -> Checkpoint:
        path = f"/v1/jobs/{c.ident(job_id)}/checkpoints/{c.ident(checkpoint_id)}"
        return Checkpoint.model_validate(await self._http.json("GET", path))

    async def download(self, job_id: str, checkpoint_id: str, dest_dir: str | os.PathLike[str],
                       verify: bool = True, progress: c.DownloadProgress | None = None) -> Path:
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
                    async with self._http.stream("GET", path) as response:
                        expected = response.headers.get("x-checksum-sha256")
                        count = c.progress_counter(progress, response)
                        with open(tmp, "wb") as handle:
                            async for chunk in response.aiter_bytes(1 << 20):
                                digest.update(chunk)
                                handle.write(chunk)
                                count(len(chunk))
                    break
                except httpx.TransportError as exc:
                    if attempt >= self._http.max_retries:
                        raise APIConnectionError(f"download of {checkpoint_id} broke: {exc}") from exc
                    await asyncio.sleep(backoff(attempt))
                    attempt += 1
            if verify:
                if not expected:
                    expected = (await self.get(job_id, checkpoint_id)).sha256
                if expected and digest.hexdigest() != expected.lower():
                    raise ChecksumError(f"checkpoint {checkpoint_id}: sha256 {digest.hexdigest()} != {expected}")
            return await asyncio.to_thread(safe_extract, tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)


class AsyncWebhooks(_AsyncResource):
    async def create(self, url: str, event_types: Sequence[str], *, description: str | None = None) -> Webhook:
        """Register an endpoint for `event_types`; the result's `secret` is shown only this once."""
        body = {"url": url, "event_types": list(event_types), "description": description}
        return Webhook.model_validate(await self._http.json("POST", "/v1/webhooks", json=body))

    def list(self, *, limit: int | None = None, after: str | None = None) -> AsyncPager[Webhook]:
        return AsyncPager(self._page("/v1/webhooks", Webhook, {"limit": limit}), after)

    async def get(self, webhook_id: str) -> Webhook:
        return Webhook.model_validate(await self._http.json("GET", f"/v1/webhooks/{c.ident(webhook_id)}"))

    async def delete(self, webhook_id: str) -> Deleted:
        return Deleted.model_validate(await self._http.json("DELETE", f"/v1/webhooks/{c.ident(webhook_id)}"))

    def deliveries(self, webhook_id: str, *, limit: int | None = None,
                   after: str | None = None) -> AsyncPager[WebhookDelivery]:
        """The delivery log, newest first."""
        path = f"/v1/webhooks/{c.ident(webhook_id)}/deliveries"
        return AsyncPager(self._page(path, WebhookDelivery, {"limit": limit}), after)


class AsyncClient:
    """Asynchronous client of the gkd service; `async with AsyncClient() as client: ...`."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT, max_retries: int = DEFAULT_MAX_RETRIES,
                 transport: httpx.AsyncBaseTransport | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        self._http = AsyncHTTP(base_url, api_key, timeout=timeout, max_retries=max_retries, transport=transport,
                               headers=headers)
        self.datasets = AsyncDatasets(self)
        self.models = AsyncModels(self)
        self.jobs = AsyncJobs(self)
        self.checkpoints = AsyncCheckpoints(self)
        self.webhooks = AsyncWebhooks(self)

    @property
    def base_url(self) -> str:
        return self._http.base_url

    @property
    def api_key(self) -> str | None:
        return self._http.api_key

    async def health(self) -> dict[str, Any]:
        return await self._http.json("GET", "/healthz")

    async def ready(self) -> dict[str, Any]:
        return await self._http.json("GET", "/readyz")

    async def close(self) -> None:
        await self._http.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient(base_url={self.base_url!r})"
