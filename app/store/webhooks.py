"""Webhook endpoints of a tenant: created within its quota, deleted with their deliveries (the outbox and the
attempts are `app.store.webhook_outbox`)."""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.store.ids import new_id
from app.store.orm import Webhook, WebhookDelivery, utcnow
from app.store.quotas import lock_tenant
from app.store.settings import Settings


class WebhookQuotaExceeded(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"quota exceeded: this tenant has {limit} webhook endpoints of its {limit}; delete one "
                         "first, or ask the operator for a larger quota (GKD_QUOTA_WEBHOOKS)")
        self.limit = limit


def create(session: Session, settings: Settings, tenant_id: str, *, url: str, event_types: list[str],
           description: str | None, sealed_secret: str) -> Webhook:
    """Insert an endpoint within the tenant's quota (the tenant stays locked until the caller commits)."""
    lock_tenant(session, tenant_id)
    held = session.scalar(select(func.count()).select_from(Webhook).where(Webhook.tenant_id == tenant_id)) or 0
    if held + 1 > settings.quota_webhooks:
        raise WebhookQuotaExceeded(settings.quota_webhooks)
    row = Webhook(id=new_id("wh"), tenant_id=tenant_id, url=url, event_types=list(event_types),
                  description=description, secret=sealed_secret, created_at=utcnow())
    session.add(row)
    session.flush()
    return row


def delete_endpoint(session: Session, webhook_id: str) -> None:
    """Remove the endpoint and its deliveries (explicitly too: a SQLite connection without foreign keys)."""
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
                    .execution_options(synchronize_session=False))
    session.execute(delete(Webhook).where(Webhook.id == webhook_id).execution_options(synchronize_session=False))
