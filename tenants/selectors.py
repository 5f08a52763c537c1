"""Reads for identity. The hot path reads through ``tenants.cache``, never these directly."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import QuerySet

from tenants.models import ApiKey, Tenant


@dataclass(frozen=True)
class KeyPrincipal:
    """What the request path needs to know about a key, cacheable as plain data."""

    api_key_pk: int
    key_id: str
    secret_hash: str
    tenant_pk: int
    tenant_slug: str
    tenant_active: bool
    revoked: bool
    expires_at: datetime | None


def key_principal_load(key_id: str) -> KeyPrincipal | None:
    key = ApiKey.objects.select_related("tenant").filter(key_id=key_id).first()
    if key is None:
        return None
    return KeyPrincipal(
        api_key_pk=key.pk,
        key_id=key.key_id,
        secret_hash=key.secret_hash,
        tenant_pk=key.tenant.pk,
        tenant_slug=key.tenant.slug,
        tenant_active=key.tenant.is_active,
        revoked=key.is_revoked,
        expires_at=key.expires_at,
    )


def tenant_get(*, slug: str) -> Tenant | None:
    return Tenant.objects.filter(slug=slug).first()


def api_key_list(*, tenant: Tenant) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(tenant=tenant)
