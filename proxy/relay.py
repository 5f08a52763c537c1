"""Stage 6, relay: the answer back to the client, as JSON or as SSE chunks, with its cost.

Streams are relayed chunk by chunk, or rather read by read: chunks that reached Tollway
together (as they do when a busy worker gets to a stream late) go out in one write
(docs/decisions/0032). Usage is collected from the provider's usage chunk
(requested upstream whatever the client asked; adapters of other formats end every stream
with one). The latest usage seen wins, since some providers repeat a cumulative total.
The client sees that chunk only if it asked for it, with ``usage.cost`` added.

Once the first byte has gone out, a failure becomes an SSE error event, never a silent
end, and the call is metered whatever happened. If the client goes away first, Tollway
keeps reading the upstream for up to ``TOLLWAY_DISCONNECT_DRAIN_SECONDS`` so the call is
billed from the provider's own count rather than an estimate.
"""

from __future__ import annotations

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
from proxy import circuit, meter, respcache
from proxy.adapters.base import ChunkStream, Completion, load_event, usage_from_openai
from proxy.errors import SSE_DONE, sse_error_event, sse_event
from proxy.parse import COMPLETIONS, EMBEDDINGS

log = logging.getLogger(__name__)

COST_HEADER = "X-Tollway-Cost"


def usage_body(usage: TokenUsage, cost: Decimal, upstream: Any = None, *, embeddings: bool = False) -> dict[str, Any]:
    """OpenAI's usage object, keeping the provider's details, plus ``cost`` in USD."""
    body = dict(upstream) if isinstance(upstream, dict) else {}
    body.update(prompt_tokens=usage.input_tokens, total_tokens=usage.input_tokens + usage.output_tokens)
    if not embeddings:
        body["completion_tokens"] = usage.output_tokens
    if usage.cached_input_tokens or usage.cache_write_tokens:
        details = dict(body.get("prompt_tokens_details") or {})
        details["cached_tokens"] = usage.cached_input_tokens
        if usage.cache_write_tokens:
            details["cache_write_tokens"] = usage.cache_write_tokens
        body["prompt_tokens_details"] = details
    body["cost"] = usd(cost)
    return body


def choice_text(choice: Any) -> str:
    """The text a choice (or a chunk's choice) carries: content, tool-call arguments, or
    a legacy completion's text. What Tollway counts when usage never arrives."""
    if not isinstance(choice, dict):
        return ""
    parts: list[str] = []
    if isinstance(choice.get("text"), str):
        parts.append(choice["text"])
    for key in ("message", "delta"):
        message = choice.get(key)
        if not isinstance(message, dict):
            continue
        if isinstance(message.get("content"), str):
            parts.append(message["content"])
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                parts.append(function["arguments"])
    return " ".join(parts)


def json_response(call: meter.Call, completion: Completion) -> HttpResponse:
    body = completion.body
    usage, estimated = completion.usage, False
    if usage is None:
        text = " ".join(choice_text(choice) for choice in body.get("choices") or [])
        usage, estimated = meter.estimate(call.chat, text), True
    # Metered before answering: a client that reads its usage right after sees this call.
    cost = meter.record(call, usage, estimated=estimated)
    body["model"] = call.route.entry.name
    body["usage"] = usage_body(usage, cost, body.get("usage"), embeddings=call.chat.endpoint == EMBEDDINGS)
    response = HttpResponse(orjson.dumps(body), content_type="application/json")
    response[COST_HEADER] = usd(cost)
    return response


def stream_response(call: meter.Call, upstream: ChunkStream) -> StreamingHttpResponse:
    response = StreamingHttpResponse(_relay(call, upstream), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx must not buffer SSE
    return response


class _Tally:
    """What a stream has told us so far: the latest usage, the text it carried, and the
    stream's own ``id``, ``created`` and ``system_fingerprint`` for the usage chunk."""

    STREAM_FIELDS = ("id", "object", "created", "system_fingerprint", "service_tier")

    def __init__(self, upstream: ChunkStream) -> None:
        self.upstream = upstream
        self.usage: TokenUsage | None = None
        self.usage_raw: Any = None  # the provider's usage object, details and all
        self.stream_fields: dict[str, Any] = {}
        self.text: list[str] = []
        self.unread: list[bytes] = []  # chunks relayed as bytes, read for their text if ever needed

    def relayed_text(self) -> str:
        """The text the stream carried, for Tollway's own count when usage never came."""
        self._read_unread()
        return "".join(self.text)

    def _read_unread(self) -> None:
        for payload in self.unread:
            chunk = load_event(payload.decode())
            self.text.extend(choice_text(choice) for choice in chunk.get("choices") or ())
        self.unread.clear()

    def rewrite(self, payload: bytes, model: bytes, include_usage: bool) -> bytes | None:
        """A plain content chunk as the bytes to relay, its model replaced (and its
        ``"usage":null`` dropped unless the client asked for usage), or None when it needs
        parsing: the first chunk (it names the stream), one that carries usage or no
        choices, one whose bytes are not plainly laid out, or not UTF-8. Rewriting the
        bytes is what the parsed path does to such a chunk, without re-encoding it."""
        if not self.stream_fields or b'"choices":[{' not in payload:
            return None
        if b'"usage"' in payload:
            if payload.count(b'"usage"') != 1 or b'"usage":null' not in payload:
                return None
            if not include_usage:
                if b',"usage":null' in payload:
                    payload = payload.replace(b',"usage":null', b"", 1)
                elif b'"usage":null,' in payload:
                    payload = payload.replace(b'"usage":null,', b"", 1)
                else:
                    return None
        if payload.count(b'"model"') != 1:
            return None
        start = payload.find(b'"model":"')
        end = payload.find(b'"', start + 9) if start >= 0 else -1
        if end < 0 or b"\\" in payload[start + 9 : end]:
            return None
        try:
            payload.decode()
        except UnicodeDecodeError:
            return None
        self.unread.append(payload)
        if len(self.unread) >= 256:  # a long stream keeps its text, not every chunk's JSON
            self._read_unread()
        return b'%s"model":%s%s' % (payload[:start], model, payload[end + 1 :])

    def take(self, chunk: dict[str, Any]) -> bool:
        """Note the chunk; True if it is a usage-only chunk, which is held back.

        A chunk that carries usage *and* choices (a provider's finish chunk, or every chunk
        with vLLM's ``continuous_usage_stats``) is relayed for its choices; only its usage
        is kept for the usage chunk Tollway sends last, which has ``choices: []``.
        """
        chunk_usage = usage_from_openai(chunk.get("usage"))
        if chunk_usage is not None:
            self.usage, self.usage_raw = chunk_usage, chunk["usage"]
        if not self.stream_fields:  # the first chunk names the stream
            self.stream_fields = {name: chunk[name] for name in self.STREAM_FIELDS if chunk.get(name)} or {"id": ""}
        choices = chunk.get("choices")
        if not choices:
            return True
        self.text.extend(choice_text(choice) for choice in choices)
        return False

    def usage_chunk(self, kind: str, model: str, usage: dict[str, Any]) -> dict[str, Any]:
        """The usage chunk the client asked for: the stream's id and ``created`` (or
        fresh ones when the stream had none), no choices, the usage with its cost."""
        chunk: dict[str, Any] = {"id": "", "object": kind, "created": int(time.time()), **self.stream_fields}
        chunk.update(model=model, choices=[], usage=usage)
        return chunk


def _relay(call: meter.Call, upstream: ChunkStream) -> Iterator[bytes]:
    """The stream to the client. Whatever fails (the upstream, the metering, Tollway
    itself), it ends with ``[DONE]`` or an SSE error event, the call is metered, and the
    upstream connection is closed."""
    model_name = call.route.entry.name
    model_json = orjson.dumps(model_name)
    include_usage = call.chat.include_usage
    chunks = iter(upstream)
    tally = _Tally(upstream)
    # A streamed miss the response cache may keep, rebuilt as a plain answer.
    collector = respcache.Collector() if call.cache_key and not call.cache_hit else None
    if collector is None:
        # Plain chunks come as the provider's bytes and go out with the model replaced,
        # never parsed or re-encoded (docs/decisions/0025).
        take_bytes = getattr(upstream, "take_bytes", None)
        if take_bytes is not None:
            take_bytes()
    outcome = UsageRecord.Outcome.CLIENT_GONE  # until the stream ends otherwise
    failure: TollwayError | None = None

    def event(chunk: dict[str, Any]) -> bytes | None:
        """A parsed chunk as the SSE event to relay; None for the usage chunk, sent last."""
        if collector is not None:
            collector.take(chunk)
        if tally.take(chunk):
            return None  # the usage chunk: sent last, with its cost
        chunk["model"] = model_name
        if not include_usage:
            chunk.pop("usage", None)
        elif chunk.get("usage") is not None:
            chunk["usage"] = None  # usage goes out once, on the last chunk, with its cost
        return sse_event(chunk)

    try:
        try:
            for chunk in chunks:
                if type(chunk) is list:  # the provider's bytes, as many as arrived together: one write
                    out = []
                    for payload in chunk:
                        relayed = tally.rewrite(payload, model_json, include_usage)
                        if relayed is not None:
                            out.append(b"data: " + relayed + b"\n\n")
                        elif (parsed := event(load_event(payload.decode("utf-8", "replace")))) is not None:
                            out.append(parsed)
                    if not out:
                        continue
                    relayed = out[0] if len(out) == 1 else b"".join(out)
                elif (relayed := event(chunk)) is None:
                    continue
                if call.first_byte_at is None:
                    call.first_byte_at = time.monotonic()
                yield relayed
        except TollwayError as exc:
            outcome, failure = UsageRecord.Outcome.UPSTREAM_ERROR, exc
            _count_failure(call, exc)
        except Exception:
            log.exception("relay failed for request %s", call.request_id)
            outcome, failure = UsageRecord.Outcome.UPSTREAM_ERROR, InternalError(call.request_id)
        else:
            outcome = UsageRecord.Outcome.COMPLETED
        cost = _meter(call, tally, outcome)
        if failure is not None:
            yield onewrite.final(sse_error_event(failure))
            return
        try:
            if cost is None:
                raise RuntimeError("the call could not be metered")
            if collector is not None and (answer := collector.body(call.chat.endpoint)) is not None:
                respcache.store(call.cache_key, call.route, answer, tally.usage)
            if call.chat.include_usage:
                kind = "text_completion" if call.chat.endpoint == COMPLETIONS else "chat.completion.chunk"
                usage = usage_body(_usage_or_estimate(call, tally), cost, tally.usage_raw)
                ending = sse_event(tally.usage_chunk(kind, model_name, usage)) + SSE_DONE  # one write, not two
            else:
                ending = SSE_DONE
        except Exception:
            log.exception("relay could not end request %s", call.request_id)
            ending = sse_error_event(InternalError(call.request_id))
        yield onewrite.final(ending)  # with the chunked end, in one send
    finally:
        # GeneratorExit at a yield: the client went away. Bill what the provider counts.
        try:
            if not call.metered:
                if outcome == UsageRecord.Outcome.CLIENT_GONE and tally.usage is None:
                    _drain(call, chunks, tally)
                _meter(call, tally, outcome)
        finally:
            try:
                upstream.close()
            except Exception:
                log.exception("request %s: closing the upstream stream failed", call.request_id)


def _count_failure(call: meter.Call, exc: TollwayError) -> None:
    """Too late to retry, but a deployment that keeps breaking streams gets ejected."""
    latency = int((time.monotonic() - call.started) * 1000)
    try:
        circuit.record_failure(call.route.target.deployment_pk, status=exc.upstream_status, latency_ms=latency)
    except Exception:
        log.exception("request %s: could not count the failure against its deployment", call.request_id)


def _drain(call: meter.Call, chunks: Iterator[dict[str, Any]], tally: _Tally) -> None:
    """Read on, relaying nothing, until the usage arrives or the drain time is up.

    Each read is still bounded by the provider's idle and total timeouts.
    """
    deadline = time.monotonic() + float(settings.TOLLWAY["DISCONNECT_DRAIN_SECONDS"])
    try:
        for chunk in chunks:
            for one in chunk if type(chunk) is list else (chunk,):
                tally.take(load_event(one.decode("utf-8", "replace")) if type(one) is bytes else one)
            if tally.usage is not None or time.monotonic() > deadline:
                return
    except Exception as exc:  # the upstream failed too: the estimate will do
        log.info("request %s: upstream ended while draining after a disconnect: %r", call.request_id, exc)


def _usage_or_estimate(call: meter.Call, tally: _Tally) -> TokenUsage:
    """The provider's usage; failing that, what it had counted so far (its input side is
    exact, cached tokens included) with the output no less than Tollway's own count."""
    if tally.usage is not None:
        return tally.usage
    return meter.usage_of_cut_stream(call.chat, tally.relayed_text(), tally.upstream.partial_usage())


def _meter(call: meter.Call, tally: _Tally, outcome: UsageRecord.Outcome) -> Decimal | None:
    """Meter the call (spooled if Postgres is away); None if that failed unexpectedly,
    in which case its reservation stays held and the sweeper bills it."""
    if call.upstream_done is None:
        call.upstream_done = time.monotonic()
    try:
        return meter.record(call, _usage_or_estimate(call, tally), estimated=tally.usage is None, outcome=outcome)
    except Exception:
        log.exception("request %s: metering failed; its reservation stays for the sweeper", call.request_id)
        return None
