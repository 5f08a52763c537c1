"""The adapter interface: one provider kind, spoken in OpenAI's formats both ways.

An adapter takes an OpenAI-shaped request body (with the provider's model name already
in ``model``) and returns OpenAI-shaped answers: a ``chat.completion`` (or
``text_completion``, or an embedding list) and, for streams, ``chat.completion.chunk``
dicts. Usage always travels in OpenAI's ``usage`` object; the last chunk of every stream
carries it with ``choices: []``, whatever the provider's own format.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

import httpx
import orjson
from django.conf import settings

from billing.pricing import TokenUsage
from config.errors import ErrorCode, InvalidRequest, RateLimited, TollwayError, UpstreamError
from proxy import credentials, upstream
from proxy.route import Target
from proxy.translate.common import usage_with_details

log = logging.getLogger(__name__)


@dataclass
class Completion:
    """A non-streamed answer in OpenAI's shape, and its usage if reported."""

    body: dict[str, Any]
    usage: TokenUsage | None


class ChunkStream(Protocol):
    """An open upstream stream of OpenAI chunk dicts.

    Iterating raises :class:`UpstreamError` if the stream fails or ends before its end
    marker (and closes it then). ``close()`` releases the connection, and is safe to call
    twice: the reader calls it once done, even after the end marker.
    """

    def __iter__(self) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...

    def partial_usage(self) -> TokenUsage | None:
        """What the provider has counted so far, for a stream that ends before its usage
        chunk (Anthropic's ``message_start``, Gemini's latest snapshot); None if nothing."""
        ...


class Adapter(Protocol):
    def complete(self, target: Target, body: dict[str, Any]) -> Completion:
        """Chat: call the provider and return the whole answer, or raise UpstreamError."""
        ...

    def stream(self, target: Target, body: dict[str, Any]) -> ChunkStream:
        """Chat: open a stream; raise UpstreamError if it fails before the first chunk."""
        ...

    def text_complete(self, target: Target, body: dict[str, Any]) -> Completion:
        """Legacy ``/v1/completions``."""
        ...

    def text_stream(self, target: Target, body: dict[str, Any]) -> ChunkStream:
        """Legacy ``/v1/completions`` with ``stream: true``."""
        ...

    def embed(self, target: Target, body: dict[str, Any]) -> Completion:
        """``/v1/embeddings``."""
        ...


class Unsupported:
    """Mixin: the endpoints a kind does not speak answer one clear OpenAI-shaped 400."""

    kind = "this"

    def _unsupported(self, target: Target, endpoint: str) -> InvalidRequest:
        return InvalidRequest(
            f"The model is served by a {self.kind} provider, which has no {endpoint} endpoint. "
            "Use a model served by an OpenAI-compatible provider for it.",
            param="model",
            code=ErrorCode.UNSUPPORTED,
        )

    def text_complete(self, target: Target, body: dict[str, Any]) -> Completion:
        raise self._unsupported(target, "/v1/completions")

    def text_stream(self, target: Target, body: dict[str, Any]) -> ChunkStream:
        raise self._unsupported(target, "/v1/completions")

    def embed(self, target: Target, body: dict[str, Any]) -> Completion:
        raise self._unsupported(target, "/v1/embeddings")


def usage_from_openai(usage: Any) -> TokenUsage | None:
    """OpenAI's ``usage`` object as TokenUsage; ``None`` if absent or malformed.

    Cached prompt tokens come from ``prompt_tokens_details.cached_tokens``; the cache
    writes translated adapters report (Anthropic) from ``prompt_tokens_details.cache_write_tokens``.
    Embeddings report no ``completion_tokens``: that is 0.
    """
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
    if completion is None:
        completion = 0
    if not isinstance(prompt, int) or not isinstance(completion, int) or prompt < 0 or completion < 0:
        return None
    return usage_with_details(prompt, completion, usage.get("prompt_tokens_details"))


def sse_data(chunks: Iterable[bytes], limit: int | None = None) -> Iterator[str]:
    """The ``data:`` payloads of a server-sent event stream, one per event, from the body's
    bytes as they arrive."""
    for payload in sse_payloads(chunks, limit):
        yield payload.decode("utf-8", "replace")


class EventTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"a stream event over {limit} bytes")


def sse_payloads(chunks: Iterable[bytes], limit: int | None = None) -> Iterator[bytes]:
    """:func:`sse_data`'s payloads as the provider's own bytes."""
    for batch in sse_batches(chunks, limit):
        yield from batch


def sse_batches(chunks: Iterable[bytes], limit: int | None = None) -> Iterator[list[bytes]]:
    """:func:`sse_payloads`, as the events each piece of the body completed: several when
    the provider's events arrived together (a busy worker reads a stream less often), so
    a relay can send them on in one write.

    Lines end in LF, CRLF or CR (as the SSE spec allows), however the network split them;
    the end of the stream ends the last line and event. One loop, not a generator of lines
    under a generator of events: every relayed chunk passes here.

    A line or an event longer than ``limit`` bytes (by default
    ``TOLLWAY_UPSTREAM_MAX_RESPONSE_BYTES``) is an :class:`EventTooLarge`: the stream is
    input, and an unended line would otherwise grow without bound."""
    limit = max_response_bytes() if limit is None else limit
    data: list[bytes] = []
    size = 0  # of the event's data lines so far
    pending = b""
    for chunk in chunks:
        pending += chunk
        held = pending.endswith(b"\r")  # may be half of a CRLF: it waits for the next chunk
        complete = pending[:-1] if held else pending
        if b"\r" in complete:
            complete = complete.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, pending = complete.split(b"\n")
        if held:
            pending += b"\r"
        events: list[bytes] = []
        for line in lines:
            if not line:
                if data:
                    events.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data, size = [], 0
            elif line.startswith(b"data:"):
                data.append(line[5:].lstrip(b" "))
                size += len(line)
                if size > limit:
                    raise EventTooLarge(limit)
        if events:
            yield events
        if len(pending) > limit:  # a line that has not ended, after the events before it
            raise EventTooLarge(limit)
    if pending:
        line = pending.rstrip(b"\r")
        if line.startswith(b"data:"):
            data.append(line[5:].lstrip(b" "))
    if data:
        yield [data[0] if len(data) == 1 else b"\n".join(data)]


def bad_event() -> UpstreamError:
    return UpstreamError("The upstream provider sent a malformed stream event.", code=ErrorCode.UPSTREAM_BAD_RESPONSE)


def load_event(payload: str) -> dict[str, Any]:
    try:
        event = orjson.loads(payload)  # every streamed chunk passes here: orjson is several times faster
    except ValueError:
        raise bad_event() from None
    if not isinstance(event, dict):
        raise bad_event()
    return event


def decode_chunk(payload: str) -> dict[str, Any]:
    chunk = load_event(payload)
    if "error" in chunk:
        error = chunk["error"] if isinstance(chunk["error"], Mapping) else {}
        message = str(error.get("message") or "unknown error")[:500]
        raise UpstreamError(f"The upstream provider failed mid-stream: {message}")
    return chunk


def bad_response(target: Target, content: bytes) -> UpstreamError:
    log.warning("upstream %s sent an unreadable body: %r", target.provider_name, content[:200])
    return UpstreamError(
        "The upstream provider sent a response Tollway could not read.", code=ErrorCode.UPSTREAM_BAD_RESPONSE
    )


# --- HTTP, shared by every networked kind -----------------------------------------------


def upstream_message(content: bytes) -> str:
    """The provider's error message. OpenAI, Anthropic and Gemini all put it at
    ``error.message``."""
    try:
        data = json.loads(content)
    except ValueError:
        return ""
    error = data.get("error") if isinstance(data, Mapping) else None
    message = error.get("message") if isinstance(error, Mapping) else error
    return str(message)[:500] if message else ""


def _retry_delay(content: bytes) -> str:
    """Gemini's RetryInfo (``error.details[].retryDelay``, e.g. "37s") as whole seconds."""
    if b"retryDelay" not in content:
        return ""
    try:
        details = json.loads(content)["error"]["details"]
        delay = next(d["retryDelay"] for d in details if isinstance(d, dict) and "retryDelay" in d)
        return str(max(1, round(float(str(delay).rstrip("s")))))
    except (ValueError, KeyError, TypeError, StopIteration):
        return ""


# Answers worth another attempt (on another deployment): the provider is busy, overloaded,
# conflicted or broken, not the request. 400, 401, 403, 404 and 422 never are.
RETRY_STATUSES = frozenset({408, 409, 429, 529})


def parse_retry_after(value: str) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None if unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def error_for_status(target: Target, status: int, content: bytes, headers: Mapping[str, str]) -> TollwayError:
    """Map a provider's non-200 answer to what the client should see, noting for the
    proxy's retries whether another attempt could help and when the provider said to retry."""
    error = _error_for_status(target, status, content, headers)
    error.upstream_status = status
    error.retryable = status in RETRY_STATUSES or status >= 500
    error.retry_after = parse_retry_after(headers.get("retry-after") or _retry_delay(content))
    return error


def _error_for_status(target: Target, status: int, content: bytes, headers: Mapping[str, str]) -> TollwayError:
    message = upstream_message(content)
    log.warning("upstream %s answered %s: %s", target.provider_name, status, message or content[:200])
    retry_after = headers.get("retry-after") or _retry_delay(content)
    retry = {"Retry-After": retry_after} if retry_after else {}
    if status == 400 and b"API_KEY_INVALID" in content:
        status = 401  # Gemini answers a bad key with a 400; it is still our credential
    if status in (400, 413, 422):
        # The request itself was refused: the client can fix it, so pass the reason on.
        return InvalidRequest(
            f"The upstream provider rejected the request: {message or 'no reason given'}",
            code=ErrorCode.UPSTREAM_REJECTED,
            status=status,
        )
    if status in (401, 403):
        # Our credential, not the tenant's: never pass the provider's words about it on,
        # and tell the SDK that retrying will not help.
        return UpstreamError(
            "The upstream provider refused Tollway's credentials.",
            code=ErrorCode.UPSTREAM_AUTH,
            headers={"x-should-retry": "false"},
        )
    if status == 429:
        return RateLimited("The upstream provider is rate limiting requests; retry shortly.", headers=retry)
    if status in (503, 529):
        # 529 is Anthropic's overloaded_error: transient, so tell the client when to come back.
        return UpstreamError(
            "The upstream provider is overloaded; retry shortly.",
            code=ErrorCode.UPSTREAM_OVERLOADED,
            status=503,
            headers=retry or {"Retry-After": "5"},
        )
    if status == 504:
        return UpstreamError("The upstream provider timed out.", code=ErrorCode.UPSTREAM_TIMEOUT, status=504)
    return UpstreamError(f"The upstream provider failed with HTTP {status}.")


def transport_error(target: Target, exc: httpx.HTTPError, when: str) -> UpstreamError:
    log.warning("upstream %s %s: %r", target.provider_name, when, exc)
    if isinstance(exc, httpx.TimeoutException):
        error = UpstreamError(f"The upstream provider timed out {when}.", code=ErrorCode.UPSTREAM_TIMEOUT, status=504)
    else:
        error = UpstreamError(f"The upstream provider could not be reached {when}.")
    # Connect errors, timeouts and resets: retryable while nothing has reached the client
    # (proxy.attempts decides that; the relay never retries).
    error.retryable = True
    return error


def secret(target: Target) -> str:
    """The provider credential, or an UpstreamError that does not say more than needed."""
    value = credentials.resolve(api_key_env=target.api_key_env, api_key_encrypted=target.api_key_encrypted)
    if value is None:
        log.error("provider %s: its credential is missing (%s)", target.provider_name, target.api_key_env or "stored")
        raise UpstreamError("The upstream provider is not configured.", code=ErrorCode.UPSTREAM_AUTH)
    return value


def post(target: Target, url: str, body: dict[str, Any], headers: dict[str, str], *, stream: bool) -> httpx.Response:
    """POST JSON upstream with the provider's timeouts; a non-200 raises the mapped error.

    The read timeout is the time-to-first-byte limit until the headers arrive; a streamed
    body's reads then use the idle limit (see :class:`UpstreamStream`).
    """
    limits = target.limits
    timeout = {
        "connect": limits.connect,
        "read": min(limits.first_byte, limits.total),
        "write": limits.connect,
        "pool": limits.connect,
    }
    try:
        response = upstream.post(
            url, content=orjson.dumps(body), headers={"Content-Type": "application/json", **headers}, timeout=timeout
        )
    except httpx.HTTPError as exc:
        raise transport_error(target, exc, "before answering") from None
    if response.status_code != 200:
        try:
            content, _ = read_within(response, ERROR_BODY_BYTES)  # only its message is used
        except httpx.HTTPError:
            content = b""
        finally:
            response.close()
        raise error_for_status(target, response.status_code, content, response.headers)
    if not stream:
        try:
            return read_whole(target, response)
        except httpx.HTTPError as exc:
            raise transport_error(target, exc, "while answering") from None
        finally:
            response.close()
    return response


ERROR_BODY_BYTES = 64 * 1024


def max_response_bytes() -> int:
    return int(settings.TOLLWAY["UPSTREAM_MAX_RESPONSE_BYTES"])


def too_large(target: Target, what: str) -> UpstreamError:
    limit = max_response_bytes()
    log.warning("upstream %s sent %s over TOLLWAY_UPSTREAM_MAX_RESPONSE_BYTES (%d)", target.provider_name, what, limit)
    return UpstreamError(
        f"The upstream provider sent {what} larger than this gateway accepts ({limit} bytes).",
        code=ErrorCode.UPSTREAM_BAD_RESPONSE,
    )


def _plain(response: httpx.Response) -> bool:
    return response.headers.get("content-encoding", "identity").strip().lower() in ("", "identity")


def read_within(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """The body as decoded, at most ``limit`` bytes of it; whether there was more."""
    parts, size = [], 0
    for part in response.iter_bytes():
        parts.append(part)
        size += len(part)
        if size > limit:
            return b"".join(parts)[:limit], True
    return b"".join(parts), False


def read_whole(target: Target, response: httpx.Response) -> httpx.Response:
    """The response with its whole body read, or ``too_large`` past the bound: an
    upstream is input too, and a worker holds the body (and its parse) in memory."""
    limit = max_response_bytes()
    length = response.headers.get("content-length", "")
    if length.isdigit() and _plain(response):  # nearly every answer: its size is known first
        if int(length) > limit:
            raise too_large(target, "an answer")
        response.read()
        return response
    content, over = read_within(response, limit)  # chunked, read to the close, or compressed
    if over:
        raise too_large(target, "an answer")
    headers = [(k, v) for k, v in response.headers.multi_items() if k not in _FRAMING]
    return httpx.Response(response.status_code, headers=headers, content=content, request=response.request)


_FRAMING = frozenset(("content-encoding", "content-length", "transfer-encoding"))


def json_of(target: Target, response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise bad_response(target, response.content)
    return data


class UpstreamStream:
    """An open streamed response: SSE payloads with the idle and total limits applied.

    Subclasses turn the provider's events into OpenAI chunks in :meth:`chunks`.
    """

    def __init__(self, target: Target, response: httpx.Response) -> None:
        self.target = target
        self.response = response
        limits = target.limits
        self.deadline = time.monotonic() + limits.total
        # httpcore reads the read timeout when the body is first iterated, from this very
        # dict, so from here on each read waits at most the idle gap.
        timeout = response.request.extensions.get("timeout")
        if isinstance(timeout, dict):
            timeout["read"] = min(limits.idle, limits.total)
        if "text/event-stream" not in response.headers.get("content-type", ""):
            response.close()
            raise UpstreamError(
                "The upstream provider did not answer with a stream.", code=ErrorCode.UPSTREAM_BAD_RESPONSE
            )

    def payloads(self) -> Iterator[str]:
        for payload in self.raw_payloads():
            yield payload.decode("utf-8", "replace")

    def raw_payloads(self) -> Iterator[bytes]:
        for batch in self.raw_batches():
            yield from batch

    def raw_batches(self) -> Iterator[list[bytes]]:
        """The payloads, as :func:`sse_batches` groups them, within the total time limit."""
        try:
            for batch in sse_batches(self._body()):
                if time.monotonic() > self.deadline:
                    raise UpstreamError(
                        "The upstream provider took longer than its total time limit.",
                        code=ErrorCode.UPSTREAM_TIMEOUT,
                        status=504,
                    )
                yield batch
        except httpx.HTTPError as exc:
            raise transport_error(self.target, exc, "mid-stream") from None
        except EventTooLarge:
            raise too_large(self.target, "a stream event") from None

    def _body(self) -> Iterable[bytes]:
        """The body's bytes. Unless it is compressed, straight from the transport: httpx's
        decode-to-text-then-lines layers cost more than the relay itself per chunk."""
        if _plain(self.response):
            return cast("Iterable[bytes]", self.response.stream)
        return self.response.iter_bytes()

    def chunks(self) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def partial_usage(self) -> TokenUsage | None:
        return None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # A failed stream is closed here; one that ended is closed by its reader (the
        # relay, once the client has the last event), since closing reads on briefly to
        # keep the connection (proxy.upstream._Body).
        try:
            yield from self.chunks()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.response.close()


def cut_short() -> UpstreamError:
    return UpstreamError("The upstream stream ended before it finished.", code=ErrorCode.UPSTREAM_BAD_RESPONSE)
