"""Project-wide middleware."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase

_TRUSTED_ID = re.compile(r"^[A-Za-z0-9._-]{16,64}$")


class RequestIdMiddleware:
    """Give every request an id, ``request.request_id``, and echo it as ``X-Request-ID``.

    The id keys the usage ledger, so it must be unique per call. An inbound
    ``X-Request-ID`` is used only when ``TOLLWAY_TRUST_REQUEST_ID`` is on, which the
    nginx deployment sets because nginx always overwrites it with its own
    ``$request_id``; otherwise a client could make two calls share one ledger row.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response
        self.trust_inbound = getattr(settings, "TOLLWAY_TRUST_REQUEST_ID", False)

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        inbound = request.headers.get("X-Request-ID", "")
        request_id = inbound if self.trust_inbound and _TRUSTED_ID.match(inbound) else uuid.uuid4().hex
        request.request_id = request_id  # type: ignore[attr-defined]  # our own attribute
        request.started_at = time.monotonic()  # type: ignore[attr-defined]  # for the overhead metric
        response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response
