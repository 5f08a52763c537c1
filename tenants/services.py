"""Business actions on tenants and keys. The API, the admin and the commands call these.

Each validates with the same rules (``tenants.validators``) and raises Django's
``ValidationError`` keyed by field, so every caller can name the field at fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from tenants import keys
from tenants.models import ApiKey, Membership, Tenant
from tenants.validators import DEFAULT_SCOPES, normalise_cidrs

MAX_ROTATION_GRACE = timedelta(days=30)
KEY_FIELDS = (
    "name",
    "scopes",
    "expires_at",
    "allowed_models",
    "allowed_ips",
    "rpm_limit",
    "tpm_limit",
    "max_concurrent",
    "monthly_budget_usd",
    "response_cache",
)


@dataclass(frozen=True)
class CreatedKey:
    api_key: ApiKey
    plaintext: str  # shown once, never stored


def tenant_create(*, slug: str, name: str = "", monthly_budget_usd: Decimal | None = None, **fields: Any) -> Tenant:
    tenant = Tenant(slug=slug, name=name or slug, monthly_budget_usd=monthly_budget_usd, **fields)
    tenant.full_clean()
    tenant.save()
    return tenant


def tenant_update(*, tenant: Tenant, **fields: Any) -> Tenant:
    for name, value in fields.items():
        setattr(tenant, name, value)
    tenant.full_clean()
    tenant.save()
    return tenant


def tenant_set_status(*, tenant: Tenant, status: Tenant.Status) -> Tenant:
    tenant.status = status
    tenant.save(update_fields=["status", "updated_at"])
    return tenant


def _clean_key(api_key: ApiKey, *, check_expiry: bool) -> None:
    if check_expiry and api_key.expires_at is not None and api_key.expires_at <= timezone.now():
        raise ValidationError({"expires_at": ["The expiry must be in the future."]})
    api_key.full_clean(exclude=["key_id", "secret_hash", "last4", "tenant"])
    api_key.allowed_ips = normalise_cidrs(api_key.allowed_ips)


def api_key_create(*, tenant: Tenant, name: str = "", scopes: list[str] | None = None, **fields: Any) -> CreatedKey:
    unknown = set(fields) - set(KEY_FIELDS)
    if unknown:
        raise TypeError(f"api_key_create got unknown fields: {', '.join(sorted(unknown))}")
    api_key = ApiKey(tenant=tenant, name=name, scopes=list(scopes or DEFAULT_SCOPES), **fields)
    _clean_key(api_key, check_expiry=True)
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


def api_key_update(*, api_key: ApiKey, **fields: Any) -> ApiKey:
    unknown = set(fields) - set(KEY_FIELDS)
    if unknown:
        raise TypeError(f"api_key_update got unknown fields: {', '.join(sorted(unknown))}")
    if api_key.is_revoked:
        raise ValidationError({"__all__": ["A revoked key cannot be changed. Create a new key."]})
    for name, value in fields.items():
        setattr(api_key, name, value)
    _clean_key(api_key, check_expiry="expires_at" in fields)
    api_key.save()
    return api_key


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke at once, everywhere within a second. Revoking twice changes nothing."""
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.previous_secret_hash = ""
        api_key.previous_expires_at = None
        api_key.save(update_fields=["revoked_at", "previous_secret_hash", "previous_expires_at"])
    return api_key


@transaction.atomic
def api_key_rotate(*, api_key: ApiKey, grace: timedelta = timedelta(0)) -> CreatedKey:
    """Give the key a new secret; the old one keeps working for ``grace`` (default: not at all).

    The key keeps its id, scopes, limits and history. Only the secret right before this
    rotation can be in grace: rotating again ends the earlier one's grace at once.
    """
    if api_key.is_revoked:
        raise ValidationError({"__all__": ["A revoked key cannot be rotated. Create a new key."]})
    if grace < timedelta(0) or grace > MAX_ROTATION_GRACE:
        raise ValidationError(
            {"grace_period_seconds": [f"Use 0 to {int(MAX_ROTATION_GRACE.total_seconds())} seconds."]}
        )
    new = keys.generate(key_id=api_key.key_id)
    now = timezone.now()
    if grace:
        api_key.previous_secret_hash, api_key.previous_expires_at = api_key.secret_hash, now + grace
    else:
        api_key.previous_secret_hash, api_key.previous_expires_at = "", None
    api_key.secret_hash, api_key.last4 = new.secret_hash, new.last4
    api_key.save(update_fields=["secret_hash", "last4", "previous_secret_hash", "previous_expires_at"])
    return CreatedKey(api_key=api_key, plaintext=new.plaintext)


def api_key_status(api_key: ApiKey, now: datetime | None = None) -> str:
    if api_key.is_revoked:
        return "revoked"
    if api_key.expires_at is not None and api_key.expires_at <= (now or timezone.now()):
        return "expired"
    return "active"


@transaction.atomic
def playground_key_get(*, membership: Membership) -> ApiKey:
    """The user's own inference key for the web playground, created on first use.

    The playground authenticates with the login cookie, never a secret, so the key's
    secret is thrown away; its only job is to carry the tenant's limits and to name the
    user on every ledger row. A revoked one is replaced by a fresh one.
    """
    key = (
        ApiKey.objects.select_for_update()
        .filter(tenant_id=membership.tenant_id, user_id=membership.user_id, revoked_at__isnull=True)
        .first()
    )
    if key is None:
        key = ApiKey(
            tenant_id=membership.tenant_id,
            user_id=membership.user_id,
            name=f"Playground: {membership.user}",
            scopes=["inference"],
        )
        api_key_issue(api_key=key)
    return key
