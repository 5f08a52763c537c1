"""The chat playground page. The page itself is static HTML plus a little JavaScript: it
calls Tollway's own ``/v1/chat/completions`` with the login cookie and a CSRF token
(``tenants.auth.authenticate_session``), so the calls are admitted, routed, metered and
billed exactly like a tenant's own."""

from __future__ import annotations

from fnmatch import fnmatchcase

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from proxy import route
from tenants.models import Membership
from tenants.web import member_required


def models_for(membership: Membership) -> list[str]:
    """The models the tenant may use: the catalog filtered by the tenant's allow-list."""
    patterns = membership.tenant.allowed_models
    return [
        m.name for m in route.listings.get("all") or () if not patterns or any(fnmatchcase(m.name, p) for p in patterns)
    ]


@member_required(Membership.Role.OWNER, Membership.Role.DEVELOPER)
def playground(request: HttpRequest) -> HttpResponse:
    membership: Membership = request.membership  # type: ignore[attr-defined]
    return render(request, "proxy/playground.html", {"models": models_for(membership)})
