"""Stage 2, authenticate: ``Authorization: Bearer <key>`` to a cached principal.

With warm caches this reads no database row (``tenants.cache``); a revocation or a
suspension reaches every replica within ``LOCAL_CACHE_SECONDS``.
"""

from __future__ import annotations

from django.http import HttpRequest
from django.utils import timezone

from config.errors import AuthenticationFailed, ErrorCode, PermissionDenied
from tenants import keys
from tenants.cache import principals
from tenants.selectors import KeyPrincipal

_HINT = "Pass your Tollway key as 'Authorization: Bearer tlw_…'."


def bearer_token(request: HttpRequest) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed(f"You didn't provide an API key. {_HINT}")
    return token.strip()


def authenticate(request: HttpRequest) -> KeyPrincipal:
    token = bearer_token(request)
    key_id = keys.parse_key_id(token)
    principal = principals.get(key_id) if key_id else None
    if principal is None or not keys.matches(token, principal.secret_hash):
        raise AuthenticationFailed(f"Incorrect API key provided. {_HINT}")
    if principal.revoked:
        raise AuthenticationFailed("This API key has been revoked. Create a new key.", code=ErrorCode.KEY_REVOKED)
    if principal.expires_at is not None and principal.expires_at <= timezone.now():
        raise AuthenticationFailed("This API key has expired. Create a new key.", code=ErrorCode.KEY_EXPIRED)
    if not principal.tenant_active:
        raise PermissionDenied(
            f"The tenant '{principal.tenant_slug}' is suspended, so its keys cannot be used. "
            "Contact the platform administrator.",
            code=ErrorCode.TENANT_SUSPENDED,
        )
    return principal
