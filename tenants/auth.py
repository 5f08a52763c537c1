"""Authenticating a key: the one implementation behind the proxy and the management API.

``Authorization: Bearer <key>`` → the key's format and checksum (offline) → the cached
principal (``tenants.cache``: no database read once warm) → a constant-time hash compare
→ revocation, expiry, suspension, IP allow-list and scope.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from functools import lru_cache

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone

from config.errors import AuthenticationFailed, ErrorCode, PermissionDenied
from tenants import activity, keys, services
from tenants.cache import principals
from tenants.models import Membership
from tenants.selectors import KeyPrincipal

_HINT = "Pass your Tollway key as 'Authorization: Bearer tlw_…'."


def bearer_token(request: HttpRequest) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed(f"You didn't provide an API key. {_HINT}")
    return token.strip()


@lru_cache(maxsize=1)
def _trusted_proxies() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in settings.TOLLWAY["TRUSTED_PROXIES"])


def _is_trusted(ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return False
    return any(address in network for network in _trusted_proxies())


def client_ip(request: HttpRequest) -> str:
    """The caller's IP. ``X-Forwarded-For`` counts only when the peer is a trusted proxy
    (nginx), and then its rightmost address that is not itself a trusted proxy wins:
    entries further left are whatever the client chose to send."""
    remote = str(request.META.get("REMOTE_ADDR", ""))
    if not _is_trusted(remote):
        return remote
    forwarded = [part.strip() for part in request.headers.get("X-Forwarded-For", "").split(",") if part.strip()]
    for hop in reversed(forwarded):
        if not _is_trusted(hop):
            return hop
    return forwarded[0] if forwarded else remote


def _secret_matches(token: str, principal: KeyPrincipal, now: datetime) -> bool:
    if keys.matches(token, principal.secret_hash):
        return True
    # During a rotation's grace period the previous secret still works.
    return bool(
        principal.previous_secret_hash
        and principal.previous_expires_at is not None
        and principal.previous_expires_at > now
        and keys.matches(token, principal.previous_secret_hash)
    )


def authenticate_token(token: str, *, scope: str | None, ip: str, now: datetime | None = None) -> KeyPrincipal:
    """The key's principal, or the error to answer with. ``scope=None`` leaves the scope
    check to the caller (the management API's permission class)."""
    now = now or timezone.now()
    key_id = keys.parse_key_id(token)
    principal = principals.get(key_id) if key_id else None
    if principal is None or not _secret_matches(token, principal, now):
        raise AuthenticationFailed(f"Incorrect API key provided. {_HINT}")
    if principal.revoked:
        raise AuthenticationFailed("This API key has been revoked. Create a new key.", code=ErrorCode.KEY_REVOKED)
    if principal.expires_at is not None and principal.expires_at <= now:
        raise AuthenticationFailed("This API key has expired. Create a new key.", code=ErrorCode.KEY_EXPIRED)
    if not principal.tenant_active:
        raise PermissionDenied(
            f"The tenant '{principal.tenant_slug}' is suspended, so its keys cannot be used. "
            "Contact the platform administrator.",
            code=ErrorCode.TENANT_SUSPENDED,
        )
    if not principal.allows_ip(ip):
        raise PermissionDenied(
            f"This API key may not be used from {ip or 'this address'}; it is limited to its IP allow-list.",
            code=ErrorCode.IP_NOT_ALLOWED,
        )
    if scope is not None and not principal.has_scope(scope):
        raise PermissionDenied(
            f"This API key lacks the '{scope}' scope needed here; it has: {', '.join(principal.scopes)}.",
            code=ErrorCode.INSUFFICIENT_SCOPE,
        )
    return principal


def authenticate_request(request: HttpRequest, *, scope: str | None) -> KeyPrincipal:
    principal = authenticate_token(bearer_token(request), scope=scope, ip=client_ip(request))
    activity.key_used(principal.api_key_pk)
    return principal


# --- the login cookie, for the web playground ---------------------------------------------

PLAYGROUND_SESSION_KEY = "tollway_playground_key"


def _no_response(request: HttpRequest) -> HttpResponse:  # CsrfViewMiddleware needs a get_response
    return HttpResponse()


def uses_session(request: HttpRequest) -> bool:
    """No key, but a login cookie: the request comes from Tollway's own pages."""
    return "Authorization" not in request.headers and settings.SESSION_COOKIE_NAME in request.COOKIES


def authenticate_session(request: HttpRequest, *, scope: str) -> KeyPrincipal:
    """A logged-in tenant user's principal: the user's playground key (``services.playground_key_get``).

    A cookie is sent by the browser on its own, so the CSRF check Django does for pages
    is enforced here too (the API views are otherwise CSRF-exempt: keys are not cookies).
    The login comes first: the CSRF check may read a form body, which a caller who is not
    logged in must not be able to make Tollway do.
    """
    user = request.user
    if not user.is_authenticated:
        raise AuthenticationFailed(f"You didn't provide an API key, and you are not logged in. {_HINT}")
    if CsrfViewMiddleware(_no_response).process_view(request, None, (), {}) is not None:  # type: ignore[arg-type]
        raise PermissionDenied(
            "The login cookie needs a CSRF token: send the csrftoken cookie's value in X-CSRFToken.",
            code=ErrorCode.PERMISSION_DENIED,
        )
    principal = None
    key_id = request.session.get(PLAYGROUND_SESSION_KEY)
    if key_id:  # the session remembers the key, so a warm call reads no database row
        principal = principals.get(key_id)
    if principal is None or principal.revoked:
        membership = Membership.objects.select_related("user").filter(user_id=user.pk).first()
        if membership is None:
            raise PermissionDenied(
                "Your account belongs to no tenant. Ask an administrator for a membership.",
                code=ErrorCode.PERMISSION_DENIED,
            )
        if not membership.can_chat:
            raise PermissionDenied(
                f"The {membership.get_role_display()} role cannot call models; ask your tenant's owner.",
                code=ErrorCode.PERMISSION_DENIED,
            )
        key_id = services.playground_key_get(membership=membership).key_id
        request.session[PLAYGROUND_SESSION_KEY] = key_id
        principal = principals.get(key_id)
    if principal is None or principal.revoked:
        raise AuthenticationFailed("Your playground key could not be loaded. Log in again.")
    if not principal.tenant_active:
        raise PermissionDenied(
            f"The tenant '{principal.tenant_slug}' is suspended. Contact the platform administrator.",
            code=ErrorCode.TENANT_SUSPENDED,
        )
    if not principal.has_scope(scope):
        raise PermissionDenied(f"The playground key lacks the '{scope}' scope.", code=ErrorCode.INSUFFICIENT_SCOPE)
    activity.key_used(principal.api_key_pk)
    return principal
