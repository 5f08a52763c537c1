"""Stage 2, authenticate: the key must hold the ``inference`` scope.

The key comes as ``Authorization: Bearer <key>`` or, as the anthropic SDKs and Claude Code
send it, ``x-api-key: <key>`` (which wins when both are sent).

The work is ``tenants.auth``, shared with the management API. With warm caches it reads
no database row, and a revocation or suspension reaches every replica within
``LOCAL_CACHE_SECONDS``.
"""

from __future__ import annotations

from django.http import HttpRequest

from config.errors import ErrorCode, NotFound
from tenants import activity
from tenants.auth import authenticate_request, authenticate_session, authenticate_token, client_ip, uses_session
from tenants.selectors import KeyPrincipal

SCOPE = "inference"
API_KEY_HEADER = "x-api-key"


def authenticate(request: HttpRequest) -> KeyPrincipal:
    presented = request.headers.get(API_KEY_HEADER, "").strip()
    if presented:
        principal = authenticate_token(presented, scope=SCOPE, ip=client_ip(request))
        activity.key_used(principal.api_key_pk)
        return principal
    # The web playground sends its login cookie instead of a key (with a CSRF token).
    if uses_session(request):
        return authenticate_session(request, scope=SCOPE)
    return authenticate_request(request, scope=SCOPE)


def require_model(principal: KeyPrincipal, model: str) -> None:
    """A model outside the allow-lists answers exactly as an unknown one, as OpenAI does."""
    if not principal.allows_model(model):
        raise NotFound(
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
            code=ErrorCode.MODEL_NOT_FOUND,
        )
