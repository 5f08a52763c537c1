"""The cached key lookup the request path authenticates through."""

from __future__ import annotations

from collections.abc import Iterable

from config.cache import TieredCache
from tenants.selectors import KeyPrincipal, key_principal_load

principals: TieredCache[KeyPrincipal] = TieredCache("tw:key", key_principal_load)


def principals_invalidate(key_ids: Iterable[str]) -> None:
    principals.invalidate(key_ids)
