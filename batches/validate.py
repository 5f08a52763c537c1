"""Validation first: every line of a batch's input file is checked before anything runs.

A line must be a JSON object with a unique ``custom_id``, ``method`` POST, ``url`` equal to
the batch's endpoint, and a ``body`` the endpoint's own parser accepts (``proxy.parse``,
the live endpoints' stage 1), for a model the batch's key may use. A file with any bad
line fails its batch with every bad line's number, and nothing runs or is billed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from django.conf import settings

from config.errors import InvalidRequest, TollwayError
from proxy import parse, route
from proxy.auth import require_model
from proxy.parse import ChatRequest
from tenants.selectors import KeyPrincipal

# The endpoints a batch may call, with the parser of each (the live endpoint's own).
PARSERS: dict[str, Callable[[dict[str, Any]], ChatRequest]] = {
    "/v1/chat/completions": parse.chat_body,
    "/v1/completions": parse.completion_body,
    "/v1/embeddings": parse.embedding_body,
}
MAX_CUSTOM_ID = 512
MAX_ERRORS = 100  # reported in the batch's errors; the rest are counted


@dataclass(frozen=True)
class Line:
    line: int
    custom_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class LineError:
    code: str
    message: str
    line: int | None = None
    param: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


class Invalid(Exception):
    """The file fails validation; ``errors`` says where (at most ``MAX_ERRORS``)."""

    def __init__(self, errors: list[LineError], total: int) -> None:
        super().__init__(f"{total} invalid line(s)")
        self.errors = errors
        self.total = total


def _request_of(number: int, raw: bytes, endpoint: str) -> tuple[str, dict[str, Any]]:
    """The line's ``custom_id`` and ``body``, or a LineError raised."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _bad(number, "invalid_json", "This line is not valid JSON.") from None
    if not isinstance(data, dict):
        raise _bad(number, "invalid_request", "Each line must be a JSON object.")
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID or "\x00" in custom_id:
        raise _bad(
            number,
            "invalid_custom_id",
            f"'custom_id' must be a non-empty string of at most {MAX_CUSTOM_ID} characters.",
            "custom_id",
        )
    if data.get("method") != "POST":
        raise _bad(number, "invalid_method", "'method' must be \"POST\".", "method")
    if data.get("url") != endpoint:
        raise _bad(
            number,
            "invalid_url",
            f"'url' is {orjson.dumps(data.get('url')).decode()[:100]}; every line of this batch must use "
            f'the batch\'s endpoint, "{endpoint}".',
            "url",
        )
    body = data.get("body")
    if not isinstance(body, dict):
        raise _bad(number, "invalid_body", "'body' must be a JSON object: the request to send.", "body")
    return custom_id, body


def _bad(number: int, code: str, message: str, param: str | None = None) -> _LineRefused:
    return _LineRefused(LineError(code=code, message=message, line=number, param=param))


class _LineRefused(Exception):
    def __init__(self, error: LineError) -> None:
        super().__init__(error.message)
        self.error = error


def check_body(body: dict[str, Any], endpoint: str, principal: KeyPrincipal) -> ChatRequest:
    """The line's request as its endpoint parses it, for a model the key may use and that
    Tollway can price; raises the endpoint's own TollwayError otherwise."""
    chat = PARSERS[endpoint](body)
    if chat.stream:
        raise InvalidRequest("Batch requests cannot stream: remove 'stream'.", param="stream")
    require_model(principal, chat.model)
    route.priced(chat.model)  # unknown, or no price in effect: the same 404 as a live call
    return chat


def lines_check(*, data: Iterable[bytes], endpoint: str, principal: KeyPrincipal) -> list[Line]:
    """Every request of the file, or :class:`Invalid` with every bad line (the first
    ``MAX_ERRORS``). Blank lines are skipped; line numbers count them."""
    limit = int(settings.TOLLWAY["BATCH_MAX_REQUESTS"])
    depth = int(settings.TOLLWAY["MAX_JSON_DEPTH"])
    lines: list[Line] = []
    errors: list[LineError] = []
    bad = 0
    seen: dict[str, int] = {}
    for number, raw in enumerate(data, start=1):
        if not raw.strip():
            continue
        try:
            custom_id, body = _request_of(number, raw, endpoint)
            if custom_id in seen:
                raise _bad(
                    number,
                    "duplicate_custom_id",
                    f"'custom_id' {custom_id[:100]!r} is also on line {seen[custom_id]}; each must be unique.",
                    "custom_id",
                )
            seen[custom_id] = number
            if not parse.depth_probe.within(body, depth):
                raise _bad(number, "invalid_body", f"'body' is nested deeper than {depth} levels.", "body")
            try:
                check_body(body, endpoint, principal)
            except TollwayError as exc:
                raise _bad(number, str(exc.code), exc.message, f"body.{exc.param}" if exc.param else "body") from None
        except _LineRefused as refused:
            bad += 1
            if len(errors) < MAX_ERRORS:
                errors.append(refused.error)
            continue
        lines.append(Line(line=number, custom_id=custom_id, body=body))
    if not lines and not bad:
        errors.append(LineError(code="empty_file", message="The input file holds no requests."))
        bad = 1
    if len(lines) + bad > limit:
        errors.insert(
            0,
            LineError(
                code="too_many_requests",
                message=f"The input file holds {len(lines) + bad} requests; a batch may hold at most {limit}.",
            ),
        )
        bad += 1
    if bad:
        raise Invalid(errors, bad)
    return lines
