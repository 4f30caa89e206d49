"""API keys and tenants: keys are stored hashed; the plain key is shown once, when it is created."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.store.ids import new_id
from app.store.orm import ApiKey, Tenant, utcnow

KEY_PREFIX = "gkd_"


def hash_key(plain: str) -> str:
    return hashlib.sha256(plain.encode("utf-8")).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(id=new_id("ten"), name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(session: Session, tenant_name: str) -> tuple[str, ApiKey]:
    """A new key for `tenant_name` (created if needed); the plain key is returned once, stored hashed."""
    tenant = get_or_create_tenant(session, tenant_name)
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(id=new_id("key"), tenant_id=tenant.id, key_hash=hash_key(plain), prefix=plain[:12])
    session.add(key)
    session.flush()
    return plain, key


def tenant_for_key(session: Session, plain: str) -> Tenant | None:
    if not plain.startswith(KEY_PREFIX) or len(plain) > 200:
        return None
    digest = hash_key(plain)
    # One round trip: the active key's hash and its tenant (this runs on every authenticated request).
    row = session.execute(
        select(ApiKey.key_hash, Tenant)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
    ).first()
    if row is None or not hmac.compare_digest(row[0], digest):
        return None
    return row[1]


def revoke_key(session: Session, key_or_prefix: str) -> list[ApiKey]:
    """Revoke by full key or by its displayed prefix (which must match exactly one active key)."""
    if key_or_prefix.startswith(KEY_PREFIX) and len(key_or_prefix) > 20:
        keys = list(session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(key_or_prefix))))
    else:
        keys = list(
            session.scalars(
                select(ApiKey).where(ApiKey.prefix.startswith(key_or_prefix), ApiKey.revoked_at.is_(None))
            )
        )
        if len(keys) > 1:
            raise ValueError(f"prefix {key_or_prefix!r} matches {len(keys)} keys; give more characters")
    for key in keys:
        if key.revoked_at is None:
            key.revoked_at = utcnow()
    session.flush()
    return keys
