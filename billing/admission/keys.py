"""Redis key names of admission. Every key of one tenant carries the hash tag ``{t<id>}``,
so a script's keys are always in one hash slot (Redis Cluster). Two keys are global and
never touched by a script: the set of tenants with reservations (for the sweeper) and the
server's boot mark (``billing.admission.inflight``)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType

TENANTS_WITH_RESERVATIONS = "tw:resv:tenants"
BOOT = "tw:boot"


def tag(tenant_id: int) -> str:
    return f"tw:{{t{tenant_id}}}"


def _key(api_key_id: int | None) -> str:
    return f"k{api_key_id or 0}"


def window(tenant_id: int, subject: str, minute: int, kind: str) -> str:
    """A rate window: ``subject`` is ``t`` (the tenant) or ``k<id>``; ``kind`` req or tok."""
    return f"{tag(tenant_id)}:rl:{subject}:{minute}:{kind}"


def key_subject(api_key_id: int | None) -> str:
    return _key(api_key_id)


def concurrent(tenant_id: int, subject: str) -> str:
    return f"{tag(tenant_id)}:cc:{subject}"


def spent(tenant_id: int, subject: str, month: str) -> str:
    return f"{tag(tenant_id)}:spent:{subject}:{month}"


def held(tenant_id: int, subject: str) -> str:
    return f"{tag(tenant_id)}:resv:{subject}"


def credit(tenant_id: int) -> str:
    return f"{tag(tenant_id)}:credit"


def reservation(tenant_id: int, request_id: str) -> str:
    return f"{tag(tenant_id)}:req:{request_id}"


def deadlines(tenant_id: int) -> str:
    return f"{tag(tenant_id)}:deadlines"


def generation(tenant_id: int) -> str:
    return f"{tag(tenant_id)}:gen"


def built(counter: str) -> str:
    """The generation ``counter`` (a spent or credit key) was built at."""
    return f"{counter}:built"


def pending(counter: str) -> str:
    """What settled into ``counter`` while it was being rebuilt."""
    return f"{counter}:pending"


def rebuild_lock(tenant_id: int) -> str:
    return f"{tag(tenant_id)}:rebuild"


@lru_cache(maxsize=4096)
def money(tenant_id: int, api_key_id: int | None, month: str) -> Mapping[str, str]:
    """The money counters of a tenant and key, with their built and pending marks, as the
    settle script names them. Made once per tenant, key and month (two calls per request)."""
    tenant_spent = spent(tenant_id, "t", month)
    key_spent = spent(tenant_id, _key(api_key_id), month)
    balance = credit(tenant_id)
    return MappingProxyType(
        {
            "tenant_spent": tenant_spent,
            "key_spent": key_spent,
            "credit": balance,
            "generation": generation(tenant_id),
            "tenant_built": built(tenant_spent),
            "key_built": built(key_spent),
            "credit_built": built(balance),
            "tenant_pending": pending(tenant_spent),
            "key_pending": pending(key_spent),
            "credit_pending": pending(balance),
        }
    )
