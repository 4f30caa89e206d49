"""POST/GET/DELETE /v1/webhooks and GET /v1/webhooks/{id}/deliveries: a tenant's webhook endpoints and their
delivery log. Sending is the webhook worker's (worker/webhooks.py)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import bindparam
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.deps import CurrentTenant, PageDep, SessionDep, SettingsDep
from app.errors import ApiError, invalid, not_found
from app.reads import row_select
from app.routes.common import PagedQuery, paginate
from app.schemas import Deleted, ListResponse, WebhookCreate, WebhookCreated, WebhookDeliveryOut, WebhookOut
from app.store import webhooks
from app.store.orm import Tenant, Webhook, WebhookDelivery
from app.store.webhook_secrets import new_secret, seal
from app.store.webhook_urls import UnsafeUrl, resolve_target

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


def get_webhook(session: Session, tenant: Tenant, webhook_id: str) -> Webhook:
    row = session.get(Webhook, webhook_id)
    if row is None or row.tenant_id != tenant.id:
        raise not_found("webhook", webhook_id)
    return row


@router.post("", status_code=201, response_model=WebhookCreated)
async def create_webhook(body: WebhookCreate, tenant: CurrentTenant, settings: SettingsDep,
                         session: SessionDep) -> WebhookCreated:
    """The response carries the signing secret; it is never shown again."""
    try:  # resolving the host blocks: off the event loop
        await run_in_threadpool(resolve_target, body.url, allow_private=settings.webhook_allow_private)
    except UnsafeUrl as exc:
        raise invalid(str(exc), param="url", code="invalid_url") from exc
    secret = new_secret()
    sealed = await run_in_threadpool(seal, settings, secret)

    def insert() -> Webhook:
        try:
            row = webhooks.create(session, settings, tenant.id, url=body.url, event_types=list(body.event_types),
                                  description=body.description, sealed_secret=sealed)
        except webhooks.WebhookQuotaExceeded as exc:
            session.rollback()
            raise ApiError(429, str(exc), code="quota_exceeded", param="webhooks", type="rate_limit_error") from exc
        session.commit()
        return row

    row = await run_in_threadpool(insert)
    return WebhookCreated(**WebhookOut.of(row).model_dump(), secret=secret)


_WEBHOOKS = PagedQuery.of(row_select(Webhook).where(Webhook.tenant_id == bindparam("tenant_id")), Webhook.id)
_DELIVERIES = PagedQuery.of(
    row_select(WebhookDelivery).where(WebhookDelivery.webhook_id == bindparam("webhook_id"),
                                      WebhookDelivery.tenant_id == bindparam("tenant_id")),
    WebhookDelivery.id,
)


@router.get("", response_model=ListResponse[WebhookOut])
def list_webhooks(tenant: CurrentTenant, session: SessionDep, page: PageDep) -> dict[str, object]:
    return paginate(session, _WEBHOOKS, {"tenant_id": tenant.id}, page, "wh", WebhookOut.of)


@router.get("/{webhook_id}", response_model=WebhookOut)
def get_webhook_route(webhook_id: str, tenant: CurrentTenant, session: SessionDep) -> WebhookOut:
    return WebhookOut.of(get_webhook(session, tenant, webhook_id))


@router.delete("/{webhook_id}", response_model=Deleted)
def delete_webhook(webhook_id: str, tenant: CurrentTenant, session: SessionDep) -> Deleted:
    """Pending deliveries go with it: nothing more is sent to the URL."""
    row = get_webhook(session, tenant, webhook_id)
    webhooks.delete_endpoint(session, row.id)
    session.commit()
    return Deleted(id=webhook_id, object="webhook")


@router.get("/{webhook_id}/deliveries", response_model=ListResponse[WebhookDeliveryOut])
def list_deliveries(webhook_id: str, tenant: CurrentTenant, session: SessionDep,
                    page: PageDep) -> dict[str, object]:
    """Newest first: each event sent (or being sent) to the endpoint, with its last attempt."""
    get_webhook(session, tenant, webhook_id)
    return paginate(session, _DELIVERIES, {"webhook_id": webhook_id, "tenant_id": tenant.id}, page, "msg",
                    WebhookDeliveryOut.of)
