"""Stage 6 for the Messages API: Anthropic's JSON answer, or its typed SSE events, back to
the client, and the call metered (``proxy.meter``) exactly as a chat call is.

A stream is relayed event by event, each with its ``event:`` line, the model renamed to
the Tollway model in ``message_start``. The same rules as ``proxy.relay``: once the first
byte has gone out, a failure becomes Anthropic's ``error`` event, never a silent end; the
call is metered whatever happened, from the provider's own usage (``message_start`` and the
last ``message_delta``), or failing that its partial count and Tollway's estimate, recorded
as an estimate; a client that hangs up is billed after reading on for up to
``TOLLWAY_DISCONNECT_DRAIN_SECONDS`` for the provider's count.

The cost is the ``X-Tollway-Cost`` header of a plain answer; a stream's is in the ledger
(Anthropic's events have no place for it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, Protocol

import orjson
from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse

from billing.models import UsageRecord
from billing.pricing import TokenUsage, usd
from config.errors import InternalError, TollwayError
from proxy import meter
from proxy.attempts import Primed
from proxy.messages import errors
from proxy.relay import COST_HEADER, _count_failure
from proxy.translate import messages as translate

log = logging.getLogger(__name__)


class Source(Protocol):
    """A stream of Anthropic events and what it has counted (``proxy.messages.call``)."""

    usage: TokenUsage | None  # the provider's final usage, once it came
    text: list[str]  # what it carried, for Tollway's own count

    def partial_usage(self) -> TokenUsage | None: ...


def json_response(call: meter.Call, message: dict[str, Any], usage: TokenUsage | None, *, native: bool) -> HttpResponse:
    """A plain answer, metered before it is sent. A native answer keeps the provider's
    ``usage`` object whole; a translated one, or one without usage, gets the billed one."""
    estimated = usage is None
    if usage is None:
        usage = meter.estimate(call.chat, translate.output_text(message))
    cost = meter.record(call, usage, estimated=estimated)
    if estimated or not native:
        message["usage"] = {**(message.get("usage") or {}), **translate.usage_body(usage)}
    message["model"] = call.route.entry.name
    response = HttpResponse(orjson.dumps(message), content_type="application/json")
    response[COST_HEADER] = usd(cost)
    response[errors.REQUEST_ID_HEADER] = call.request_id
    return response


def stream_response(call: meter.Call, primed: Primed, source: Source) -> StreamingHttpResponse:
    response = StreamingHttpResponse(_relay(call, primed, source), content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx must not buffer SSE
    response[errors.REQUEST_ID_HEADER] = call.request_id
    return response


def _relay(call: meter.Call, primed: Primed, source: Source) -> Iterator[bytes]:
    model_name = call.route.entry.name
    events = iter(primed)
    outcome = UsageRecord.Outcome.CLIENT_GONE  # until the stream ends otherwise
    failure: TollwayError | None = None
    try:
        try:
            for event in events:
                if event.get("type") == "message_start" and isinstance(event.get("message"), dict):
                    event["message"]["model"] = model_name
                if call.first_byte_at is None:
                    call.first_byte_at = time.monotonic()
                yield errors.sse_event(event)
        except TollwayError as exc:
            outcome, failure = UsageRecord.Outcome.UPSTREAM_ERROR, exc
            _count_failure(call, exc)
        except Exception:
            log.exception("relay failed for request %s", call.request_id)
            outcome, failure = UsageRecord.Outcome.UPSTREAM_ERROR, InternalError(call.request_id)
        else:
            outcome = UsageRecord.Outcome.COMPLETED
        _meter(call, source, outcome)
        if failure is not None:
            yield errors.sse_error_event(failure, call.request_id)
    finally:
        # GeneratorExit at a yield: the client went away. Bill what the provider counts.
        try:
            if not call.metered:
                if outcome == UsageRecord.Outcome.CLIENT_GONE and source.usage is None:
                    _drain(call, events, source)
                _meter(call, source, outcome)
        finally:
            try:
                primed.close()
            except Exception:
                log.exception("request %s: closing the upstream stream failed", call.request_id)


def _drain(call: meter.Call, events: Iterator[dict[str, Any]], source: Source) -> None:
    """Read on, relaying nothing, until the usage arrives or the drain time is up."""
    deadline = time.monotonic() + float(settings.TOLLWAY["DISCONNECT_DRAIN_SECONDS"])
    try:
        for _ in events:
            if source.usage is not None or time.monotonic() > deadline:
                return
    except Exception as exc:  # the upstream failed too: the estimate will do
        log.info("request %s: upstream ended while draining after a disconnect: %r", call.request_id, exc)


def _usage(call: meter.Call, source: Source) -> TokenUsage:
    """The provider's usage; failing that, what it had counted so far (its input side is
    exact) with the output no less than Tollway's own count."""
    if source.usage is not None:
        return source.usage
    return meter.usage_of_cut_stream(call.chat, "".join(source.text), source.partial_usage())


def _meter(call: meter.Call, source: Source, outcome: UsageRecord.Outcome) -> Decimal | None:
    if call.upstream_done is None:
        call.upstream_done = time.monotonic()
    try:
        return meter.record(call, _usage(call, source), estimated=source.usage is None, outcome=outcome)
    except Exception:
        log.exception("request %s: metering failed; its reservation stays for the sweeper", call.request_id)
        return None
