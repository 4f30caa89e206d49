"""GET /v1/jobs/{id}/events (list) and /v1/jobs/{id}/events/stream (Server-Sent Events).

The stream polls the database for rows after the last seq it sent; with a Redis `notify_url` it also
subscribes to the job's channel, so a worker's publish wakes it at once instead of at the next poll. While that
subscription is healthy the poll is only a safety net (a lost publish), so it runs every
`sse_fallback_poll_seconds` instead of every `sse_poll_seconds`: idle streams cost far fewer database queries.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from app.deps import CurrentTenant, SessionDep, reads_of
from app.errors import ApiError, invalid
from app.routes.common import get_job, job_row
from app.schemas import EventOut
from app.store.db import sessionmaker_for
from app.store.events import MAX_SEQ, event_dict
from app.store.jobs import TERMINAL_STATUSES, is_terminal_event
from app.store.orm import Job, JobEvent
from app.store.settings import Settings
from app.streams import SLOT_SECONDS, StreamSlots

router = APIRouter(prefix="/v1/jobs/{job_id}/events", tags=["events"])

STREAM_BATCH = 200
RETRY_STREAM_SECONDS = 5

_ASCII_DIGITS = re.compile(r"[0-9]{1,10}")


def _last_event_seq(header: str) -> int:
    """An ASCII seq within the column's range: `str.isdigit` accepts "²" and 5,000 digits, which `int` or the
    database then refused with a 500."""
    value = header.strip()
    if not _ASCII_DIGITS.fullmatch(value) or int(value) > MAX_SEQ:
        raise invalid(f"Last-Event-ID must be an event seq from 0 to {MAX_SEQ}", param="Last-Event-ID")
    return int(value)


@router.get("")
def list_events(
    job_id: str,
    tenant: CurrentTenant,
    session: SessionDep,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    job = get_job(session, tenant, job_id)
    rows = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.seq > after).order_by(JobEvent.seq)
        .limit(limit + 1)
    ).all()
    has_more = len(rows) > limit
    rows = rows[:limit]
    return {
        "object": "list",
        "data": [EventOut.of(r).model_dump(mode="json") for r in rows],
        "has_more": has_more,
        "next_cursor": str(rows[-1].seq) if has_more and rows else None,
    }


def _fetch(settings: Settings, job_id: str, after: int) -> tuple[list[JobEvent], str | None]:
    with sessionmaker_for(settings.database_url)() as session:
        # Status first: a terminal status and its event commit together, so events read *after* a terminal
        # status include that event. (Read the other way round, under READ COMMITTED the events could
        # predate the commit while the status postdates it, and the stream would end one event short.)
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        rows = list(
            session.scalars(
                select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > after).order_by(JobEvent.seq)
                .limit(STREAM_BATCH)
            )
        )
        return rows, status


class _Waker:
    """Waits for the next poll, or earlier for a Redis notification on the job's channel."""

    def __init__(self, settings: Settings, job_id: str) -> None:
        self.settings = settings
        self.channel = f"gkd:events:{job_id}"
        self.pubsub: Any = None
        self.client: Any = None

    async def start(self) -> None:
        if not self.settings.notify_url:
            return
        try:
            import redis.asyncio as aioredis

            self.client = aioredis.Redis.from_url(self.settings.notify_url, socket_connect_timeout=2)
            self.pubsub = self.client.pubsub()
            await self.pubsub.subscribe(self.channel)
        except Exception:  # noqa: BLE001 - fall back to polling only
            await self.close()

    @property
    def subscribed(self) -> bool:
        """True while the Redis subscription works (a failure closes it and the stream polls at the full rate)."""
        return self.pubsub is not None

    def poll_seconds(self) -> float:
        """How long to wait for a wake-up before reading the database anyway."""
        if self.subscribed:
            return self.settings.sse_fallback_poll_seconds
        return self.settings.sse_poll_seconds

    async def wait(self, seconds: float) -> None:
        if self.pubsub is None:
            await asyncio.sleep(seconds)
            return
        try:
            await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=seconds)
        except Exception:  # noqa: BLE001
            await self.close()
            await asyncio.sleep(seconds)

    async def close(self) -> None:
        pubsub, client, self.pubsub, self.client = self.pubsub, self.client, None, None
        try:
            if pubsub is not None:
                await pubsub.aclose()
            if client is not None:
                await client.aclose()
        except Exception:  # noqa: BLE001
            pass


async def _stream(request: Request, settings: Settings, job_id: str, after: int,
                  release: Callable[[], Awaitable[None]], renew: Callable[[], None]) -> AsyncIterator[str]:
    # The first bytes go out before the Redis subscription is made (a connection and a SUBSCRIBE round trip): the
    # client knows at once that its stream is open. The subscription still comes before the first read of the
    # events, so a publish after that read is not missed.
    yield "retry: 2000\n\n"
    waker = _Waker(settings, job_id)
    try:
        await waker.start()
        last_sent = last_renewed = time.monotonic()
        while True:
            if time.monotonic() - last_renewed >= SLOT_SECONDS / 3:
                await run_in_threadpool(renew)
                last_renewed = time.monotonic()
            rows, status = await run_in_threadpool(_fetch, settings, job_id, after)
            for row in rows:
                after = row.seq
                yield f"id: {row.seq}\nevent: {row.type}\ndata: {json.dumps(event_dict(row))}\n\n"
                last_sent = time.monotonic()
                if is_terminal_event(row):
                    return
            if not rows and (status is None or status in TERMINAL_STATUSES):
                # Resumed after the terminal event (or the job vanished): nothing more will come.
                return
            if len(rows) == STREAM_BATCH:
                continue
            if await request.is_disconnected():
                return
            if time.monotonic() - last_sent >= settings.sse_keepalive_seconds:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()
            # Wake up in time for the next keep-alive even when the poll interval is longer.
            until_keepalive = settings.sse_keepalive_seconds - (time.monotonic() - last_sent)
            await waker.wait(max(0.0, min(waker.poll_seconds(), until_keepalive)))
    finally:
        await waker.close()
        await release()


class EventStreamResponse(StreamingResponse):
    """The stream's type, so the OpenAPI document lists `text/event-stream` (not JSON) as its 200 answer."""

    media_type = "text/event-stream"


STREAM_OPENAPI: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: `id: <seq>`, `event: <type>`, `data: <event as JSON>` per event, "
        "a `: keep-alive` comment when idle; reconnect with `Last-Event-ID`.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


@router.get("/stream", response_class=EventStreamResponse, responses=STREAM_OPENAPI)
async def stream_events(
    job_id: str,
    request: Request,
    tenant: CurrentTenant,
    after: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    # async: the job's check is one hop to the read threads (app/reads.py) and the slot one hop to the thread pool;
    # a sync route with a session took a hop for the route and a session with its pre-ping round trip.
    job: str = await reads_of(request)(lambda db: job_row(db, tenant, job_id).id)
    start = after or 0
    if last_event_id:
        start = max(start, _last_event_seq(last_event_id))
    settings: Settings = request.app.state.settings
    slots: StreamSlots = request.app.state.stream_slots
    slot = await run_in_threadpool(slots.acquire, tenant.id)
    if slot is None:
        raise ApiError(429, f"this tenant already holds {slots.per_tenant} open event streams (the limit); close one "
                       "or poll GET /v1/jobs/{id}/events", code="too_many_streams", type="rate_limit_error",
                       headers={"Retry-After": str(RETRY_STREAM_SECONDS)})
    released = False

    async def release() -> None:  # from the stream's end and from the response's end, whichever comes (both may)
        nonlocal released
        if not released:
            released = True
            with anyio.CancelScope(shield=True):  # also when the stream was cancelled by the client's disconnect
                await run_in_threadpool(slots.release, tenant.id, slot)

    return EventStreamResponse(
        _stream(request, settings, job, start, release, lambda: slots.renew(tenant.id, slot)),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=BackgroundTask(release),
    )
