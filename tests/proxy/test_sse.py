"""Reading a provider's event stream: however TCP splits it, whatever line endings and
compression it uses, every event reaches the client whole and the call is billed from it."""

from __future__ import annotations

import gzip
import json

import pytest

from billing.models import UsageRecord
from proxy.adapters.base import sse_data
from tests.conftest import Api, Catalog, Upstream, sse_events, user
from tests.rawhttp import RawServer

CHUNK = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "up"}


def frame(events: list[str], newline: bytes) -> bytes:
    out = b": keep-alive comment" + newline + newline
    for event in events:
        out += b"event: message" + newline
        for line in event.split("\n"):
            out += b"data: " + line.encode() + newline
        out += newline
    return out


EVENTS = ['{"a":"h\u00e9llo w\u00f6rld \U0001f600"}', "first line\nsecond line", "[DONE]"]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_events_survive_every_split_point(newline: bytes) -> None:
    stream = frame(EVENTS, newline)
    for cut in range(1, len(stream)):  # split inside CRLFs and multi-byte characters too
        assert list(sse_data([stream[:cut], stream[cut:]])) == EVENTS, cut
    assert list(sse_data([bytes([b]) for b in stream])) == EVENTS, "one byte at a time"


def test_a_last_event_without_its_blank_line_is_kept() -> None:
    assert list(sse_data([b"data: one\n\ndata: two"])) == ["one", "two"]
    assert list(sse_data([b"data: one\r\n\r\ndata: two\r"])) == ["one", "two"]


@pytest.mark.django_db
@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_a_crlf_stream_in_odd_pieces_is_relayed_and_billed(api: Api, catalog: Catalog, compressed: bool) -> None:
    events = [
        json.dumps({**CHUNK, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]})
        for word in ("h\u00e9llo", " w\u00f6rld")
    ]
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    events.append(json.dumps({**CHUNK, "choices": [], "usage": usage}))
    body = frame([*events, "[DONE]"], b"\r\n")
    encoding = b""
    if compressed:
        body, encoding = gzip.compress(body), b"Content-Encoding: gzip\r\n"
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]  # splits CRLFs and characters
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + encoding + b"Connection: close\r\n\r\n"
    # Sent in pieces with pauses between them, so the gateway reads them as separate chunks.
    server = RawServer(pieces=[head, *pieces], pause=0.02, hang_up=True)
    catalog.add_http_model("raw", Upstream(base_url=f"http://127.0.0.1:{server.port}/v1", port=server.port), "up")

    response = api.chat({"model": "raw", "messages": user("hi"), "stream": True})

    assert response.status_code == 200
    relayed = sse_events(response)
    assert relayed[-1] == "[DONE]"
    assert "".join(c["choices"][0]["delta"]["content"] for c in relayed[:-1] if c["choices"]) == "h\u00e9llo w\u00f6rld"
    row = UsageRecord.objects.get()
    assert (row.input_tokens, row.output_tokens, row.usage_estimated) == (7, 3, False)
    assert row.outcome == UsageRecord.Outcome.COMPLETED


@pytest.mark.django_db
def test_streams_one_after_another_share_one_upstream_connection(api: Api, catalog: Catalog) -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    body = frame(
        [
            json.dumps({**CHUNK, "choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]}),
            json.dumps({**CHUNK, "choices": [], "usage": usage}),
            "[DONE]",
        ],
        b"\n",
    )
    # Chunked HTTP/1.1 that keeps the connection, the closing chunk sent after [DONE].
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    server = RawServer(pieces=[head + f"{len(body):x}\r\n".encode() + body + b"\r\n", b"0\r\n\r\n"])
    catalog.add_http_model("kept", Upstream(base_url=f"http://127.0.0.1:{server.port}/v1", port=server.port), "up")
    for _ in range(3):
        response = api.chat({"model": "kept", "messages": user("hi"), "stream": True})
        assert sse_events(response)[-1] == "[DONE]"
    assert server.accepted == 1, "each stream ended its response cleanly, so the next reused the connection"
    assert UsageRecord.objects.count() == 3
