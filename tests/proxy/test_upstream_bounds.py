"""An upstream's answer is input too: past TOLLWAY_UPSTREAM_MAX_RESPONSE_BYTES a worker
stops reading it and the caller gets upstream_bad_response, in the answer's shape or as an
error event mid-stream; within it, every framing and encoding still reads whole."""

from __future__ import annotations

import gzip
import json
import time
from typing import Any

import pytest

from billing.models import UsageRecord
from proxy.adapters.base import EventTooLarge, sse_data
from tests.conftest import Api, Catalog, Upstream, sse_events, user
from tests.proxy.test_errors import assert_openai_error
from tests.rawhttp import RawServer

LIMIT = 4096
ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "up",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


@pytest.fixture(autouse=True)
def small_bound(settings: Any) -> None:
    settings.TOLLWAY = {**settings.TOLLWAY, "UPSTREAM_MAX_RESPONSE_BYTES": LIMIT}


def serve(catalog: Catalog, *pieces: bytes, hang_up: bool = True) -> RawServer:
    """An upstream answering ``pieces``; without ``hang_up`` it then holds the connection
    open, so a gateway still reading waits out the provider's timeouts (a few seconds)."""
    server = RawServer(pieces=list(pieces), hang_up=hang_up)
    upstream = Upstream(base_url=f"http://127.0.0.1:{server.port}/v1", port=server.port)
    catalog.add_http_model("raw", upstream, "up", first_byte_timeout=3, idle_timeout=3)
    return server


def chunked(body: bytes, encoding: bytes = b"") -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n" + encoding + b"\r\n"
    pieces = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:100], body[100:]) if part)
    return head + pieces + b"0\r\n\r\n"


@pytest.mark.django_db
def test_an_answer_declared_over_the_bound_is_refused_before_its_body_is_read(api: Api, catalog: Catalog) -> None:
    # The head alone: reading the body would wait for the read timeout (a 504, not this).
    serve(catalog, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n")
    error = assert_openai_error(api.chat({"model": "raw", "messages": user("hi")}), 502, "upstream_bad_response")
    assert str(LIMIT) in error["message"]
    assert not UsageRecord.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("compressed", [False, True], ids=["chunked", "gzip bomb"])
def test_an_answer_without_a_length_stops_being_read_at_the_bound(api: Api, catalog: Catalog, compressed: bool) -> None:
    big = json.dumps({**ANSWER, "pad": "x" * (LIMIT * 4)}).encode()
    serve(catalog, chunked(gzip.compress(big), b"Content-Encoding: gzip\r\n") if compressed else chunked(big))
    assert_openai_error(api.chat({"model": "raw", "messages": user("hi")}), 502, "upstream_bad_response")


@pytest.mark.django_db
@pytest.mark.parametrize("compressed", [False, True], ids=["chunked", "gzip"])
def test_an_answer_within_the_bound_reads_whole_whatever_its_framing(
    api: Api, catalog: Catalog, compressed: bool
) -> None:
    body = json.dumps(ANSWER).encode()
    serve(catalog, chunked(gzip.compress(body), b"Content-Encoding: gzip\r\n") if compressed else chunked(body))
    response = api.chat({"model": "raw", "messages": user("hi")})
    assert response.status_code == 200, response.content
    assert response.json()["choices"][0]["message"]["content"] == "hello"
    assert UsageRecord.objects.get().output_tokens == 1


@pytest.mark.django_db
def test_an_endless_error_body_is_read_only_as_far_as_its_message(api: Api, catalog: Catalog) -> None:
    head = b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
    serve(catalog, head + b"Retry-After: 1\r\n\r\n" + b"20000\r\n" + b"x" * 0x20000 + b"\r\n", hang_up=False)
    started = time.monotonic()
    response = api.chat({"model": "raw", "messages": user("hi")})
    assert_openai_error(response, 429, "rate_limit_exceeded")
    assert time.monotonic() - started < 2, "it did not wait for the rest of the body"


@pytest.mark.django_db
def test_a_stream_event_over_the_bound_ends_the_stream_with_an_error_and_is_billed(api: Api, catalog: Catalog) -> None:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "up"}
    first = {**chunk, "choices": [{"index": 0, "delta": {"content": "hello"}, "finish_reason": None}]}
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    # Then, in the same read or not, a line that does not end: without the bound it would be
    # held until the upstream stops.
    first_event = b"data: " + json.dumps(first).encode() + b"\n\n"
    serve(catalog, head + first_event + b"data: " + b"x" * (LIMIT * 4), hang_up=False)

    response = api.chat({"model": "raw", "messages": user("hi"), "stream": True})

    relayed = sse_events(response)
    assert relayed[0]["choices"][0]["delta"]["content"] == "hello"
    assert relayed[-1]["error"]["code"] == "upstream_bad_response"
    row = UsageRecord.objects.get()
    assert row.usage_estimated and row.outcome == UsageRecord.Outcome.UPSTREAM_ERROR


def test_an_event_of_many_data_lines_is_bounded_as_a_whole() -> None:
    line = b"data: " + b"y" * 1000 + b"\n"
    assert list(sse_data([line * 3 + b"\n"], limit=LIMIT)) == ["\n".join(["y" * 1000] * 3)]
    with pytest.raises(EventTooLarge):
        list(sse_data([line * 5 + b"\n"], limit=LIMIT))


def test_the_events_before_an_overlong_line_are_delivered_first() -> None:
    delivered = []
    with pytest.raises(EventTooLarge):
        for event in sse_data([b"data: one\n\ndata: " + b"z" * (LIMIT + 1)], limit=LIMIT):
            delivered.append(event)
    assert delivered == ["one"]
