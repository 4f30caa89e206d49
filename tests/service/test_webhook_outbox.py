"""The webhook outbox in the store (SQLite and PostgreSQL) and one attempt of the worker's: backoff doubles up to its
cap, a delivery fails for good after its last attempt, a due delivery is claimed by one dispatcher only, and the
host is checked again at delivery (a URL accepted while private targets were allowed is refused once they are not:
the DNS-rebinding guard), without a request going out."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.store import webhooks
from app.store.db import session_scope, sessionmaker_for
from app.store.ids import new_id
from app.store.jobs import QUEUED
from app.store.orm import Dataset, Job, TeacherModel, WebhookDelivery, utcnow
from app.store.settings import Settings
from app.store.webhook_outbox import (
    FAILED,
    PENDING,
    SUCCEEDED,
    backoff_seconds,
    claim_due,
    record_attempt,
    record_event,
)
from app.store.webhook_secrets import new_secret, seal
from tests.support.receiver import receiver
from tests.support.service import new_key, tenant_id_of
from worker.webhooks import attempt


def test_backoff_doubles_up_to_its_cap() -> None:
    settings = Settings(webhook_backoff_seconds=2, webhook_backoff_max_seconds=10)
    assert [backoff_seconds(settings, n) for n in range(1, 6)] == [2, 4, 8, 10, 10]


@pytest.fixture
def plain_settings(settings: Settings) -> Settings:
    """Two attempts at most, a minute apart: nothing becomes due again by itself during a test."""
    return settings.model_copy(update={"webhook_max_attempts": 2, "webhook_backoff_seconds": 60})


def _row(settings: Settings, delivery_id: str) -> WebhookDelivery:
    with session_scope(settings.database_url) as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None
        session.expunge(row)
        return row


def test_a_delivery_fails_for_good_after_its_last_attempt(plain_settings: Settings) -> None:
    settings = plain_settings
    delivery_id, _ = _queued_delivery(settings)
    with sessionmaker_for(settings.database_url)() as session:
        before = utcnow()
        assert record_attempt(session, settings, delivery_id, status_code=500, latency_ms=3,
                              error="HTTP 500") == PENDING
    row = _row(settings, delivery_id)
    assert row.attempts == 1 and row.next_attempt_at >= before + timedelta(seconds=59)
    with sessionmaker_for(settings.database_url)() as session:
        assert record_attempt(session, settings, delivery_id, status_code=None, latency_ms=1000,
                              error="ConnectTimeout") == FAILED
        assert record_attempt(session, settings, delivery_id, status_code=200, latency_ms=1, error=None) is None
    row = _row(settings, delivery_id)
    assert (row.status, row.attempts, row.response_status, row.error) == (FAILED, 2, None, "ConnectTimeout")


def test_a_due_delivery_is_claimed_once(plain_settings: Settings) -> None:
    settings = plain_settings
    delivery_id, _ = _queued_delivery(settings)
    with sessionmaker_for(settings.database_url)() as one, sessionmaker_for(settings.database_url)() as two:
        first = claim_due(one, settings, 100)
        second = claim_due(two, settings, 100)
    assert delivery_id in [d for d, _ in first] and delivery_id not in [d for d, _ in second]
    assert _row(settings, delivery_id).next_attempt_at > utcnow()  # leased: due again only if its task dies


def _expire_lease(settings: Settings, delivery_id: str) -> None:
    with sessionmaker_for(settings.database_url)() as session:
        session.query(WebhookDelivery).filter_by(id=delivery_id).update({"next_attempt_at": utcnow()})
        session.commit()


def test_a_message_sent_again_after_its_lease_attempts_once(plain_settings: Settings) -> None:
    """The first message waited in the queue past its lease, so the delivery was sent again: the stale message
    makes no request, the newer one does."""
    settings = plain_settings.model_copy(update={"webhook_allow_private": True})
    with receiver() as got:
        delivery_id, _ = _queued_delivery(settings, got.url)
        with sessionmaker_for(settings.database_url)() as session:
            [(_, stale)] = claim_due(session, settings, 100)
            _expire_lease(settings, delivery_id)
            [(_, fresh)] = claim_due(session, settings, 100)
        assert attempt(settings, delivery_id, stale) is None and got.received == []
        assert attempt(settings, delivery_id, fresh) == SUCCEEDED and len(got.received) == 1
        assert attempt(settings, delivery_id, fresh) is None and len(got.received) == 1  # a duplicate message


def test_the_host_is_checked_again_at_delivery(plain_settings: Settings) -> None:
    with receiver() as got:
        allowed = plain_settings.model_copy(update={"webhook_allow_private": True})
        delivery_id, _ = _queued_delivery(allowed, got.url)
        refused = plain_settings.model_copy(update={"webhook_allow_private": False})
        assert attempt(refused, delivery_id) == PENDING
        row = _row(refused, delivery_id)
        assert row.attempts == 1 and "non-public" in (row.error or "") and got.received == []
        _expire_lease(allowed, delivery_id)  # due now, with private targets allowed again
        assert attempt(allowed, delivery_id) == SUCCEEDED
        assert len(got.received) == 1 and got.received[0].headers["webhook-id"] == delivery_id


def _queued_delivery(settings: Settings, url: str = "http://93.184.215.14/hooks") -> tuple[str, str]:
    """An endpoint of a new tenant at `url` (job.queued only), a job of that tenant with the teacher and dataset rows
    its foreign keys need, and the job.queued delivery in the outbox; (delivery id, secret)."""
    with session_scope(settings.database_url) as session:
        if session.get(TeacherModel, "mdl_x") is None:
            session.add(TeacherModel(id="mdl_x", tenant_id=None, name="x", path="x", source="builtin", labels=[],
                                     num_layers=1, hidden_size=1, num_parameters=1))
            session.flush()
    tenant_key = new_key(settings)
    tenant_id = tenant_id_of(settings, tenant_key)
    with session_scope(settings.database_url) as session:
        dataset_id = new_id("ds")
        session.add(Dataset(id=dataset_id, tenant_id=tenant_id, name="x", format="csv", rows=0, sha256="0" * 64,
                            size_bytes=0, path="x"))
        session.flush()
        secret = new_secret()
        webhooks.create(session, settings, tenant_id, url=url, event_types=["job.queued"], description=None,
                        sealed_secret=seal(settings, secret))
        job_id = new_id("job")
        session.add(Job(id=job_id, tenant_id=tenant_id, status=QUEUED, method="kd", teacher_id="mdl_x",
                        training_dataset_id=dataset_id))
        session.flush()
        ids = record_event(session, job_id, "job.queued", {"job_id": job_id, "status": QUEUED})
        assert record_event(session, job_id, "job.succeeded", {}) == []  # not subscribed
    assert len(ids) == 1
    return ids[0], secret
