"""The adapter interface: one provider kind, spoken in OpenAI's chat format both ways."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from billing.pricing import TokenUsage
from config.errors import ErrorCode, UpstreamError
from proxy.route import Target


@dataclass
class Completion:
    """A non-streamed answer in OpenAI's ``chat.completion`` shape, and its usage if reported."""

    body: dict[str, Any]
    usage: TokenUsage | None


class ChunkStream(Protocol):
    """An open upstream stream of ``chat.completion.chunk`` dicts.

    Iterating raises :class:`UpstreamError` if the stream fails or ends before its end
    marker; ``close()`` releases the connection, and is safe to call twice.
    """

    def __iter__(self) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...


class Adapter(Protocol):
    def complete(self, target: Target, body: dict[str, Any]) -> Completion:
        """Call the provider and return the whole answer, or raise UpstreamError."""
        ...

    def stream(self, target: Target, body: dict[str, Any]) -> ChunkStream:
        """Open a stream; raise UpstreamError if it fails before the first chunk."""
        ...


def usage_from_openai(usage: Any) -> TokenUsage | None:
    """OpenAI's ``usage`` object as TokenUsage; ``None`` if absent or malformed."""
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int) or prompt < 0 or completion < 0:
        return None
    return TokenUsage(input_tokens=prompt, output_tokens=completion)


def sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The ``data:`` payloads of a server-sent event stream, one per event."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
    if data:
        yield "\n".join(data)


def decode_chunk(payload: str) -> dict[str, Any]:
    try:
        chunk = json.loads(payload)
    except ValueError:
        raise UpstreamError(
            "The upstream provider sent a malformed stream event.", code=ErrorCode.UPSTREAM_BAD_RESPONSE
        ) from None
    if not isinstance(chunk, dict):
        raise UpstreamError(
            "The upstream provider sent a malformed stream event.", code=ErrorCode.UPSTREAM_BAD_RESPONSE
        )
    if "error" in chunk:
        error = chunk["error"] if isinstance(chunk["error"], Mapping) else {}
        message = str(error.get("message") or "unknown error")[:500]
        raise UpstreamError(f"The upstream provider failed mid-stream: {message}")
    return chunk
