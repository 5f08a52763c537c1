"""The proxy's one error renderer: a TollwayError becomes an OpenAI-shaped response."""

from __future__ import annotations

from typing import Any

import orjson
from django.http import JsonResponse

from config.errors import TollwayError, error_body


def error_response(exc: TollwayError) -> JsonResponse:
    response = JsonResponse(exc.body(), status=exc.status)
    for name, value in exc.headers.items():
        response[name] = value
    return response


def sse_error_event(exc: TollwayError) -> bytes:
    """An error after the stream began: the openai SDK raises on an event with an ``error`` key."""
    return sse_event(error_body(exc.message, type=exc.type, param=exc.param, code=exc.code))


def sse_event(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
