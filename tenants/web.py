"""Pages for logged-in tenant users: the membership gate and key management.

Every page finds its tenant through ``request.user.membership`` and nowhere else, so an
id from another tenant simply is not found (404).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from tenants import selectors, services
from tenants.forms import DashboardKeyForm
from tenants.models import Membership

PageView = Callable[..., HttpResponseBase]


def membership_of(request: HttpRequest) -> Membership | None:
    user = request.user
    if not user.is_authenticated:
        return None
    return Membership.objects.select_related("tenant", "user").filter(user_id=user.pk).first()


def member_required(*roles: str) -> Callable[[PageView], PageView]:
    """Log in first; then the user needs a membership (and one of ``roles``, if given).

    The view gets the membership as ``request.membership``.
    """

    def decorator(view: PageView) -> PageView:
        @login_required
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            membership = membership_of(request)
            if membership is None:
                return render(request, "tollway/no_membership.html", status=403)
            if roles and membership.role not in roles:
                return render(
                    request,
                    "tollway/forbidden.html",
                    {"roles": [Membership.Role(r).label for r in roles]},
                    status=403,
                )
            request.membership = membership  # type: ignore[attr-defined]
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


@require_POST
@member_required(Membership.Role.OWNER)
def key_create(request: HttpRequest) -> HttpResponse:
    membership: Membership = request.membership  # type: ignore[attr-defined]
    form = DashboardKeyForm(request.POST)
    if form.is_valid():
        try:
            created = services.api_key_create(tenant=membership.tenant, **form.key_fields(membership.tenant))
        except ValidationError as exc:
            found = exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}
            for field, errors in found.items():
                field = {"expires_at": "expires_on"}.get(field, field)
                form.add_error(field if field in form.fields else None, errors)
        else:
            return render(
                request, "tollway/key_created.html", {"api_key": created.api_key, "plaintext": created.plaintext}
            )
    # Nothing was made: the form again, with what was typed and what to fix.
    return render(request, "tollway/key_form.html", {"form": form}, status=400)


@require_POST
@member_required(Membership.Role.OWNER)
def key_revoke(request: HttpRequest, key_id: str) -> HttpResponse:
    membership: Membership = request.membership  # type: ignore[attr-defined]
    api_key = selectors.api_key_get(tenant_id=membership.tenant_id, key_id=key_id)
    if api_key is None:
        raise Http404("No such key.")
    services.api_key_revoke(api_key=api_key)
    return redirect("/dashboard/#keys")
