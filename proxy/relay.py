"""Stage 6, relay: the answer back to the client, as JSON or as SSE chunks, with its cost.

Streams are relayed chunk by chunk. Usage is collected from the provider's final usage
chunk (requested upstream whatever the client asked); the client sees that chunk only if
it asked for it, with ``usage.cost`` added. Once the first byte has gone out, a failure
becomes an SSE error event, never a silent end, and the call is metered whatever happened.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from django.http import JsonResponse, StreamingHttpResponse

from billing.models import UsageRecord
from billing.pricing import TokenUsage, usd
from config.errors import TollwayError, UpstreamError
from proxy import meter
from proxy.adapters.base import ChunkStream, Completion, usage_from_openai
from proxy.errors import SSE_DONE, sse_error_event, sse_event

log = logging.getLogger(__name__)

COST_HEADER = "X-Tollway-Cost"


def usage_body(usage: TokenUsage, cost: Decimal, upstream: Any = None) -> dict[str, Any]:
    """OpenAI's usage object, keeping the provider's details, plus ``cost`` in USD."""
    body = dict(upstream) if isinstance(upstream, dict) else {}
    body.update(
        prompt_tokens=usage.input_tokens,
        completion_tokens=usage.output_tokens,
        total_tokens=usage.input_tokens + usage.output_tokens,
        cost=usd(cost),
    )
    return body


def json_response(call: meter.Call, completion: Completion) -> JsonResponse:
    body = completion.body
    usage, estimated = completion.usage, False
    if usage is None:
        text = " ".join(
            str((choice.get("message") or {}).get("content") or "")
            for choice in body.get("choices", [])
            if isinstance(choice, dict)
        )
        usage, estimated = meter.estimate(call.chat, text), True
    cost = meter.record(call, usage, estimated=estimated)
    body["model"] = call.route.entry.name
    body["usage"] = usage_body(usage, cost, body.get("usage"))
    response = JsonResponse(body)
    response[COST_HEADER] = usd(cost)
    return response


def stream_response(call: meter.Call, upstream: ChunkStream) -> StreamingHttpResponse:
    response = StreamingHttpResponse(_relay(call, upstream), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx must not buffer SSE
    return response


def _relay(call: meter.Call, upstream: ChunkStream) -> Iterator[bytes]:
    model_name = call.route.entry.name
    usage: TokenUsage | None = None
    usage_chunk: dict[str, Any] | None = None
    relayed: list[str] = []
    outcome = UsageRecord.Outcome.CLIENT_GONE  # until the stream ends otherwise
    try:
        try:
            for chunk in upstream:
                chunk_usage = usage_from_openai(chunk.get("usage"))
                if chunk_usage is not None:
                    usage, usage_chunk = chunk_usage, chunk
                choices = chunk.get("choices")
                if not choices:
                    continue  # the usage chunk: sent last, with its cost
                for choice in choices:
                    delta = choice.get("delta") if isinstance(choice, dict) else None
                    if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                        relayed.append(delta["content"])
                chunk["model"] = model_name
                if not call.chat.include_usage:
                    chunk.pop("usage", None)
                yield sse_event(chunk)
        except TollwayError as exc:
            outcome = UsageRecord.Outcome.UPSTREAM_ERROR
            _meter(call, usage, relayed, outcome)
            yield sse_error_event(exc)
            return
        except Exception:
            log.exception("relay failed for request %s", call.request_id)
            outcome = UsageRecord.Outcome.UPSTREAM_ERROR
            _meter(call, usage, relayed, outcome)
            yield sse_error_event(UpstreamError("The stream failed inside Tollway."))
            return
        outcome = UsageRecord.Outcome.COMPLETED
        cost = _meter(call, usage, relayed, outcome)
        if call.chat.include_usage:
            final = dict(usage_chunk or {"id": "", "object": "chat.completion.chunk", "choices": []})
            final["model"] = model_name
            final["usage"] = usage_body(_usage_or_estimate(call, usage, relayed), cost, final.get("usage"))
            yield sse_event(final)
        yield SSE_DONE
    finally:
        # The client went away (GeneratorExit at a yield) or anything else: bill what we know.
        if not call.metered:
            _meter(call, usage, relayed, outcome)
        upstream.close()


def _usage_or_estimate(call: meter.Call, usage: TokenUsage | None, relayed: list[str]) -> TokenUsage:
    return usage if usage is not None else meter.estimate(call.chat, "".join(relayed))


def _meter(call: meter.Call, usage: TokenUsage | None, relayed: list[str], outcome: UsageRecord.Outcome) -> Decimal:
    return meter.record(call, _usage_or_estimate(call, usage, relayed), estimated=usage is None, outcome=outcome)
