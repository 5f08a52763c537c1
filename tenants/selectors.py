"""Reads for identity. The hot path reads through ``tenants.cache``, never these directly."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fnmatch import fnmatchcase

from django.db.models import QuerySet

from tenants.models import ApiKey, Tenant

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class KeyPrincipal:
    """What the request path needs to know about a key and its tenant, cacheable as plain data."""

    api_key_pk: int
    key_id: str
    secret_hash: str
    previous_secret_hash: str
    previous_expires_at: datetime | None
    tenant_pk: int
    tenant_slug: str
    tenant_active: bool
    revoked: bool
    expires_at: datetime | None
    scopes: tuple[str, ...]
    allowed_models: tuple[str, ...]
    allowed_networks: tuple[Network, ...]
    tenant_allowed_models: tuple[str, ...]
    rpm_limit: int | None
    tpm_limit: int | None
    max_concurrent: int | None
    monthly_budget_usd: Decimal | None
    tenant_rpm_limit: int | None
    tenant_tpm_limit: int | None
    tenant_max_concurrent: int | None
    tenant_monthly_budget_usd: Decimal | None
    tenant_timezone: str
    response_cache: str = ""  # the key's response-cache mode, or else its tenant's ("" = off)

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    def allows_model(self, model: str) -> bool:
        """Both the tenant's and the key's allow-lists admit ``model`` (an empty list admits all)."""
        return all(
            not patterns or any(fnmatchcase(model, p) for p in patterns)
            for patterns in (self.tenant_allowed_models, self.allowed_models)
        )

    def allows_ip(self, ip: str) -> bool:
        if not self.allowed_networks:
            return True
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self.allowed_networks)


def key_principal_load(key_id: str) -> KeyPrincipal | None:
    key = ApiKey.objects.select_related("tenant").filter(key_id=key_id).first()
    if key is None:
        return None
    tenant = key.tenant
    return KeyPrincipal(
        api_key_pk=key.pk,
        key_id=key.key_id,
        secret_hash=key.secret_hash,
        previous_secret_hash=key.previous_secret_hash,
        previous_expires_at=key.previous_expires_at,
        tenant_pk=tenant.pk,
        tenant_slug=tenant.slug,
        tenant_active=tenant.is_active,
        revoked=key.is_revoked,
        expires_at=key.expires_at,
        scopes=tuple(key.scopes),
        allowed_models=tuple(key.allowed_models),
        allowed_networks=tuple(ipaddress.ip_network(c, strict=False) for c in key.allowed_ips),
        tenant_allowed_models=tuple(tenant.allowed_models),
        rpm_limit=key.rpm_limit,
        tpm_limit=key.tpm_limit,
        max_concurrent=key.max_concurrent,
        monthly_budget_usd=key.monthly_budget_usd,
        tenant_rpm_limit=tenant.rpm_limit,
        tenant_tpm_limit=tenant.tpm_limit,
        tenant_max_concurrent=tenant.max_concurrent,
        tenant_monthly_budget_usd=tenant.monthly_budget_usd,
        tenant_timezone=tenant.timezone,
        response_cache=key.response_cache or tenant.response_cache,
    )


def tenant_get(*, slug: str) -> Tenant | None:
    return Tenant.objects.filter(slug=slug).first()


def api_key_list(*, tenant_id: int) -> QuerySet[ApiKey]:
    """A tenant's keys, newest first. The one place tenant scoping of keys happens."""
    return ApiKey.objects.filter(tenant_id=tenant_id).order_by("-created_at", "-pk")


def api_key_get(*, tenant_id: int, key_id: str) -> ApiKey | None:
    return api_key_list(tenant_id=tenant_id).filter(key_id=key_id).first()
