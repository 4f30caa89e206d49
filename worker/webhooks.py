"""Sending webhooks: one signed attempt of a delivery (`attempt`, the body of the `deliver_webhook` task) and the
dispatcher thread of a webhook worker that sends the due deliveries of the outbox (`app.store.webhook_outbox`).

Each attempt resolves the endpoint's host again and refuses a non-public address unless GKD_WEBHOOK_ALLOW_PRIVATE
(DNS rebinding: the name may point elsewhere than when the endpoint was created), then connects to exactly the address
it checked, with the name in the Host header and in TLS (SNI and certificate check). Redirects are not followed (a
3xx is a failed attempt), and the response body is never read.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import httpx
from standardwebhooks.webhooks import Webhook as Signer

from app.store.db import sessionmaker_for, with_retries
from app.store.orm import Webhook, WebhookDelivery
from app.store.queue import send_delivery
from app.store.settings import Settings
from app.store.webhook_outbox import PENDING, claim_due, record_attempt, release, start_attempt
from app.store.webhook_secrets import unseal
from app.store.webhook_urls import Target, UnsafeUrl, resolve_target
from worker.periodic import PeriodicThread

log = logging.getLogger("gkd.worker.webhooks")
USER_AGENT = "gkd-webhooks/1"


def signed_headers(secret: str, delivery_id: str, body: str, now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (a fresh timestamp each time; the id stays the delivery's)."""
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Signer(secret).sign(delivery_id, now, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def pinned_url(url: str, target: Target) -> str:
    """`url` with its host replaced by the checked address (the request must not resolve the name again)."""
    parts = urlsplit(url)
    host = f"[{target.address}]" if target.address.version == 6 else str(target.address)
    return urlunsplit((target.scheme, f"{host}:{target.port}", parts.path or "/", parts.query, ""))


def post(settings: Settings, url: str, body: str, headers: dict[str, str]) -> int:
    """POST `body` to `url` through the checked address; the response's status code (its body is not read)."""
    target = resolve_target(url, allow_private=settings.webhook_allow_private)
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    with httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False, trust_env=False) as client:
        request = client.build_request("POST", pinned_url(url, target), content=body.encode(),
                                       headers={**headers, "host": urlsplit(url).netloc}, extensions=extensions)
        response = client.send(request, stream=True)
        response.close()
        return response.status_code


def attempt(settings: Settings, delivery_id: str, lease: datetime | None = None) -> str | None:
    """Make one attempt of a pending delivery, if the task's `lease` still holds, and record it; the delivery's
    status after it (None: nothing to do)."""
    sessions = sessionmaker_for(settings.database_url)
    with sessions() as session:
        if not start_attempt(session, settings, delivery_id, lease):
            return None
        delivery = session.get(WebhookDelivery, delivery_id)
        endpoint = session.get(Webhook, delivery.webhook_id) if delivery is not None else None
        if delivery is None or endpoint is None or delivery.status != PENDING:
            return None
        url, sealed, payload = endpoint.url, endpoint.secret, delivery.payload
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    status_code: int | None = None
    error: str | None = None
    started = time.monotonic()
    try:
        status_code = post(settings, url, body, signed_headers(unseal(settings, sealed), delivery_id, body,
                                                               datetime.now(UTC)))
        if not 200 <= status_code < 300:
            error = f"the endpoint answered HTTP {status_code}"
    except UnsafeUrl as exc:
        error = str(exc)
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    latency_ms = round((time.monotonic() - started) * 1000)

    def record() -> str | None:
        with sessions() as session:
            return record_attempt(session, settings, delivery_id, status_code=status_code, latency_ms=latency_ms,
                                  error=error)

    status = with_retries(record, attempts=settings.db_retry_attempts, what="webhook attempt")
    log.info("webhook delivery %s: %s (%s)", delivery_id, status, error or status_code)
    return status


class Dispatcher(PeriodicThread):
    """Sends the due deliveries of the outbox to the webhook queue every `webhook_poll_seconds` (webhook workers
    only). Several dispatchers are fine: `claim_due` gives each due delivery to one of them."""

    thread_name = "gkd-webhook-dispatcher"

    def interval_seconds(self) -> float:
        return self.settings.webhook_poll_seconds

    def round(self) -> object:
        return self.dispatch_once()

    def dispatch_once(self) -> int:
        """Send at most twice what this worker's threads take at once per round, so that deliveries do not wait in
        the queue past their lease when many are due."""
        sent = 0
        with sessionmaker_for(self.settings.database_url)() as session:
            for delivery_id, lease in claim_due(session, self.settings, 2 * self.settings.webhook_concurrency):
                if send_delivery(self.celery, self.settings, delivery_id, lease):
                    sent += 1
                else:
                    release(session, delivery_id)
        return sent
