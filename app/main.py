"""The FastAPI application factory. Nothing here holds job state: every request reads the database."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from celery import Celery
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from app import api_docs, dashboard, errors
from app.body_limit import BodyLimitMiddleware, limits_for
from app.ratelimit import RateLimitMiddleware
from app.reads import Reads
from app.routes import checkpoints, datasets, events, health, jobs, metrics, models, results, saliency, webhooks
from app.schemas import JobCreate, WebhookCreate
from app.store.queue import make_celery
from app.store.settings import Settings
from app.streams import StreamSlots
from app.tenant_cache import TenantCache
from app.tmp_sweep import api_temporaries, sweep_stale


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        settings.ensure_dirs()
        await run_in_threadpool(lambda: sweep_stale(api_temporaries(settings.storage), settings.tmp_stale_seconds))
        if settings.migrate_on_start:
            from app.store.db import upgrade

            await run_in_threadpool(upgrade, settings.database_url)
        yield

    app = FastAPI(
        title="gkd",
        version="0.1.0",
        summary="Gradient Knowledge Distillation as a service",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc are app.api_docs: their files from this server, not a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.tenant_cache = TenantCache(settings.api_key_cache_seconds)
    app.state.reads = Reads(settings.database_url, settings.read_threads)

    @functools.cache
    def celery_producer() -> Celery:
        """The producer that sends jobs by task name (`app.store.queue`), built on first use."""
        return make_celery(settings)

    app.state.celery = celery_producer
    errors.install(app, body_models=(JobCreate, saliency.SaliencyRequest, WebhookCreate))
    # Routers are matched in this order, one route after another: the polled ones first (a job's status, its events)
    # cost the least matching. The OpenAPI document lists paths in the same order.
    for module in (jobs, events, checkpoints, results, datasets, models, webhooks, saliency, health, metrics,
                   dashboard, api_docs):
        app.include_router(module.router)
    if settings.rate_limit.strip():
        app.add_middleware(RateLimitMiddleware, settings=settings)
    app.add_middleware(BodyLimitMiddleware, limit_for=limits_for(settings))  # outermost: before the rate counter
    app.state.stream_slots = StreamSlots.for_settings(settings)
    return app
