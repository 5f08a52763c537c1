"""Business actions on tenants and keys. Views, commands and the admin call these."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from tenants import keys
from tenants.models import ApiKey, Tenant


@dataclass(frozen=True)
class CreatedKey:
    api_key: ApiKey
    plaintext: str  # shown once, never stored


def tenant_create(*, slug: str, name: str = "", monthly_budget_usd: Decimal | None = None) -> Tenant:
    tenant = Tenant(slug=slug, name=name or slug, monthly_budget_usd=monthly_budget_usd)
    tenant.full_clean()
    tenant.save()
    return tenant


def tenant_set_status(*, tenant: Tenant, status: Tenant.Status) -> Tenant:
    tenant.status = status
    tenant.save(update_fields=["status", "updated_at"])
    return tenant


def api_key_create(*, tenant: Tenant, name: str = "", expires_at: datetime | None = None) -> CreatedKey:
    api_key = ApiKey(tenant=tenant, name=name, expires_at=expires_at)
    plaintext = api_key_issue(api_key=api_key)
    return CreatedKey(api_key=api_key, plaintext=plaintext)


@transaction.atomic
def api_key_issue(*, api_key: ApiKey) -> str:
    """Give an unsaved key its secret and save it. Returns the plaintext, shown once."""
    new = keys.generate()
    api_key.key_id = new.key_id
    api_key.secret_hash = new.secret_hash
    api_key.last4 = new.last4
    api_key.save()
    return new.plaintext


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    return api_key
