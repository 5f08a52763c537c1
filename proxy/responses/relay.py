"""Stages 6 and 7 for ``/v1/responses``: the ``response`` object, or its typed SSE
events, metered exactly as chat is (``proxy.meter``: one ledger row, the provider's usage
or an estimate recorded as one, billed when the client goes away).

Both routes end up here as one thing: a :class:`Source` of Responses events. A translated
call's source turns chat chunks into events (``proxy.translate.responses.Events``); a
passed-through call's source is the provider's own events. The relay sends its own
``response.created`` and ``response.in_progress`` first and the terminal event
(``response.completed`` / ``response.incomplete``, with ``usage.cost``) last, once the
call is metered and, with ``store``, stored; every event gets its ``sequence_number``. A
stream that fails after it began ends with ``response.failed``.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import orjson
from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse

from billing.models import UsageRecord
from billing.pricing import TokenUsage, usd
from config import onewrite
from config.errors import InternalError, TollwayError
from proxy import meter, respcache
from proxy.adapters.base import ChunkStream, Completion, usage_from_openai
from proxy.relay import COST_HEADER, _count_failure
from proxy.responses import store
from proxy.responses.request import ResponsesRequest
from proxy.translate import responses as translate

log = logging.getLogger(__name__)


def _request(call: meter.Call) -> ResponsesRequest:
    assert isinstance(call.chat, ResponsesRequest)
    return call.chat


def _usage_body(usage: TokenUsage, cost: Decimal, upstream: Any, reasoning: int) -> dict[str, Any]:
    """Responses' usage object (the provider's own when it sent one), plus ``cost``."""
    body = dict(upstream) if isinstance(upstream, dict) else (translate.usage_object(usage, reasoning) or {})
    body["cost"] = usd(cost)
    return body


def _final(call: meter.Call, body: dict[str, Any]) -> dict[str, Any]:
    """The response object as the client sees it: Tollway's id, model name and
    ``previous_response_id``; stored first when the request asked for it."""
    request = _request(call)
    body.update(
        id=request.response_id,
        model=call.route.entry.name,
        previous_response_id=request.request_body.get("previous_response_id"),
        store=request.store,
        created_at=request.created_at,
    )
    if request.store and body.get("status") in ("completed", "incomplete"):
        try:
            store.stored_response_create(
                tenant_pk=call.principal.tenant_pk,
                response_id=request.response_id,
                root_id=request.root_id,
                previous_pk=request.previous_pk,
                body=body,
                input_items=request.items,
            )
        except Exception:
            # The call is answered and billed; failing it now would charge for nothing.
            # Without its row, a later GET or previous_response_id answers 404.
            log.exception("request %s: could not store response %s", call.request_id, request.response_id)
    return body


def _text_of(output: list[dict[str, Any]]) -> str:
    """The text an answer carries, for Tollway's count when usage never arrives."""
    parts: list[str] = []
    for item in output:
        if item.get("type") == "function_call":
            parts.append(str(item.get("arguments") or ""))
        for part in item.get("content") or []:
            if isinstance(part, dict):
                parts.append(str(part.get("text") or part.get("refusal") or ""))
    return " ".join(parts)


def json_response(call: meter.Call, completion: Completion, *, native: bool) -> HttpResponse:
    """A plain answer: a provider's ``response`` (``native``) or a ``chat.completion``."""
    request = _request(call)
    if native:
        body = completion.body
        upstream_usage = body.get("usage")
        reasoning = 0
    else:
        output, status, incomplete = translate.output_of(completion.body)
        upstream_usage = None
        reasoning = translate.reasoning_tokens(completion.body.get("usage"))
        body = translate.response_object(
            request.request_body,
            response_id=request.response_id,
            created_at=request.created_at,
            model=call.route.entry.name,
            status=status,
            output=output,
            incomplete_details=incomplete,
        )
    usage, estimated = completion.usage, False
    if usage is None:
        usage, estimated = meter.estimate(call.chat, _text_of(body.get("output") or [])), True
        upstream_usage = None
    cost = meter.record(call, usage, estimated=estimated)
    body["usage"] = _usage_body(usage, cost, upstream_usage, reasoning)
    response = HttpResponse(orjson.dumps(_final(call, body)), content_type="application/json")
    response[COST_HEADER] = usd(cost)
    return response


# --- streams ----------------------------------------------------------------------------


class Source:
    """A stream of Responses output events from either route, and what it has told so far."""

    def __init__(self, upstream: ChunkStream) -> None:
        self.upstream = upstream
        self.usage: TokenUsage | None = None
        self.usage_raw: Any = None
        self.output: list[dict[str, Any]] = []
        self.status = "completed"
        self.incomplete_details: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.reasoning_tokens = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def partial_usage(self) -> TokenUsage | None:
        return self.upstream.partial_usage()

    def close(self) -> None:
        self.upstream.close()


class ChatSource(Source):
    """A translated call: chat chunks in, Responses events out."""

    def __init__(self, upstream: ChunkStream, cache_key: str | None = None) -> None:
        super().__init__(upstream)
        self.events = translate.Events()
        self.output = self.events.output
        self.collector = respcache.Collector() if cache_key else None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for chunk in self.upstream:
            if self.collector is not None:
                self.collector.take(chunk)
            usage = usage_from_openai(chunk.get("usage"))
            if usage is not None:
                self.usage = usage
            yield from self.events.chunk(chunk)
        yield from self.events.finish()
        self.status, self.incomplete_details = self.events.status, self.events.incomplete_details
        self.reasoning_tokens = self.events.reasoning_tokens


class NativeSource(Source):
    """A passed-through call: the provider's events, less its lifecycle ones (the relay
    sends Tollway's own, with Tollway's response id); the terminal one is kept for its
    output and usage."""

    LIFECYCLE = frozenset({"response.created", "response.in_progress", "response.queued"})

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for event in self.upstream:
            kind = event.get("type")
            if kind in self.LIFECYCLE:
                continue
            if kind in ("response.completed", "response.incomplete", "response.failed"):
                final: dict[str, Any] = event["response"] if isinstance(event.get("response"), dict) else {}
                self.output = list(final.get("output") or self.output)
                self.status = {"response.completed": "completed", "response.incomplete": "incomplete"}.get(
                    kind or "", "failed"
                )
                self.incomplete_details = final.get("incomplete_details")
                self.error = final.get("error")
                usage = translate.usage_from_response(final.get("usage"))
                if usage is not None:
                    self.usage, self.usage_raw = usage, final["usage"]
                return
            if kind == "response.output_item.done" and isinstance(event.get("item"), dict):
                index = event.get("output_index", len(self.output))
                while len(self.output) <= index:
                    self.output.append({})
                self.output[index] = event["item"]
            yield event


def stream_response(call: meter.Call, source: Source) -> StreamingHttpResponse:
    response = StreamingHttpResponse(_relay(call, source), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def _sse(event: dict[str, Any]) -> bytes:
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def _usage_or_estimate(call: meter.Call, source: Source) -> TokenUsage:
    if source.usage is not None:
        return source.usage
    return meter.usage_of_cut_stream(call.chat, _text_of(source.output), source.partial_usage())


def _meter(call: meter.Call, source: Source, outcome: UsageRecord.Outcome) -> Decimal | None:
    if call.upstream_done is None:
        call.upstream_done = time.monotonic()
    try:
        usage = _usage_or_estimate(call, source)
        return meter.record(call, usage, estimated=source.usage is None, outcome=outcome)
    except Exception:
        log.exception("request %s: metering failed; its reservation stays for the sweeper", call.request_id)
        return None


def _drain(call: meter.Call, events: Iterator[dict[str, Any]], source: Source) -> None:
    """The client went away: read on, relaying nothing, until the usage arrives or the
    drain time is up, so the call is billed from the provider's count."""
    deadline = time.monotonic() + float(settings.TOLLWAY["DISCONNECT_DRAIN_SECONDS"])
    try:
        for _ in events:
            if source.usage is not None or time.monotonic() > deadline:
                return
    except Exception as exc:
        log.info("request %s: upstream ended while draining after a disconnect: %r", call.request_id, exc)


def _relay(call: meter.Call, source: Source) -> Iterator[bytes]:
    request = _request(call)
    numbers = itertools.count()
    model = call.route.entry.name

    def emit(event: dict[str, Any]) -> bytes:
        event["sequence_number"] = next(numbers)
        return _sse(event)

    def lifecycle(status: str, **fields: Any) -> dict[str, Any]:
        return translate.response_object(
            request.request_body,
            response_id=request.response_id,
            created_at=request.created_at,
            model=model,
            status=status,
            **fields,
        )

    events = iter(source)
    outcome = UsageRecord.Outcome.CLIENT_GONE
    failure: TollwayError | None = None
    try:
        call.first_byte_at = time.monotonic()
        yield emit({"type": "response.created", "response": lifecycle("in_progress")})
        yield emit({"type": "response.in_progress", "response": lifecycle("in_progress")})
        try:
            for event in events:
                yield emit(event)
        except TollwayError as exc:
            outcome, failure = UsageRecord.Outcome.UPSTREAM_ERROR, exc
            _count_failure(call, exc)
        except Exception:
            log.exception("relay failed for request %s", call.request_id)
            outcome, failure = UsageRecord.Outcome.UPSTREAM_ERROR, InternalError(call.request_id)
        else:
            outcome = UsageRecord.Outcome.COMPLETED
        cost = _meter(call, source, outcome)
        if failure is None and source.status == "failed":
            error = source.error or {"code": "server_error", "message": "The upstream provider failed."}
            failed = lifecycle("failed", output=source.output, error=error)
            if cost is not None:
                failed["usage"] = _usage_body(_usage_or_estimate(call, source), cost, source.usage_raw, 0)
            yield emit({"type": "response.failed", "response": failed})
            return
        if failure is not None:
            error = {"code": "server_error", "message": failure.message}
            yield emit({"type": "response.failed", "response": lifecycle("failed", output=source.output, error=error)})
            return
        try:
            if cost is None:
                raise RuntimeError("the call could not be metered")
            collector = getattr(source, "collector", None)
            if collector is not None and (answer := collector.body("chat")) is not None:
                respcache.store(call.cache_key, call.route, answer, source.usage)
            usage = _usage_body(_usage_or_estimate(call, source), cost, source.usage_raw, source.reasoning_tokens)
            final = lifecycle(
                source.status, output=source.output, usage=usage, incomplete_details=source.incomplete_details
            )
            kind = "response.completed" if source.status == "completed" else "response.incomplete"
            ending = emit({"type": kind, "response": _final(call, final)})
        except Exception:
            log.exception("relay could not end request %s", call.request_id)
            error = {"code": "server_error", "message": InternalError(call.request_id).message}
            ending = emit({"type": "response.failed", "response": lifecycle("failed", error=error)})
        yield onewrite.final(ending)  # with the chunked end, in one send
    finally:
        try:
            if not call.metered:
                if outcome == UsageRecord.Outcome.CLIENT_GONE and source.usage is None:
                    _drain(call, events, source)
                _meter(call, source, outcome)
        finally:
            try:
                source.close()
            except Exception:
                log.exception("request %s: closing the upstream stream failed", call.request_id)
