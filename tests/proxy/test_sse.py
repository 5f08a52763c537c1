"""Reading a provider's event stream: however TCP splits it, whatever line endings and
compression it uses, every event reaches the client whole and the call is billed from it."""

from __future__ import annotations

import gzip
import json

import pytest

from billing.models import UsageRecord
from proxy import tokens
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


def compact(chunk: dict[str, object]) -> str:
    return json.dumps(chunk, separators=(",", ":"))


def raw_stream(events: list[str], *, ended: bool = True) -> RawServer:
    """An OpenAI-compatible upstream sending ``events`` as given, then [DONE] (or hanging up)."""
    body = frame([*events, "[DONE]"] if ended else events, b"\n")
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    return RawServer(pieces=[head, body], hang_up=True)


def content(word: str, **extra: object) -> dict[str, object]:
    choice = {"index": 0, "delta": {"content": word}, "logprobs": None, "finish_reason": None, **extra}
    return {**CHUNK, "choices": [choice], "usage": None}


@pytest.mark.django_db
@pytest.mark.parametrize("include_usage", [False, True], ids=["no usage asked", "usage asked"])
def test_plain_chunks_go_out_as_the_providers_own_bytes_with_only_the_model_replaced(
    api: Api, catalog: Catalog, include_usage: bool
) -> None:
    # Given a provider whose chunks carry numbers a JSON round trip would rewrite
    logprobs = {"content": [{"token": "a", "logprob": -1.0e-5, "bytes": [97]}]}
    chunks = [compact(content("one")), *(compact(content(w, logprobs=logprobs)) for w in (" two", " three"))]
    chunks = [c.replace("-1e-05", "-1.0E-5") for c in chunks]  # as some servers print floats
    usage = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    chunks.append(compact({**CHUNK, "choices": [], "usage": usage}))
    server = raw_stream(chunks)
    catalog.add_http_model("bytes", Upstream(base_url=f"http://127.0.0.1:{server.port}/v1", port=server.port), "up")
    body: dict[str, object] = {"model": "bytes", "messages": user("hi"), "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}

    response = api.chat(body)

    # Then each content chunk after the first is the provider's bytes, the model replaced
    # (and "usage":null gone unless usage was asked for), never parsed and re-encoded
    relayed = b"".join(response.streaming_content).decode().split("\n\n")
    for sent, upstream in zip(relayed[1:3], chunks[1:3], strict=True):
        expected = upstream.replace('"model":"up"', '"model":"bytes"')
        if not include_usage:
            expected = expected.replace(',"usage":null', "")
        assert sent == "data: " + expected
    assert "-1.0E-5" in relayed[1]
    # And the call is billed from the provider's usage, sent last when asked for
    row = UsageRecord.objects.get()
    assert (row.input_tokens, row.output_tokens, row.usage_estimated) == (9, 3, False)
    events = [json.loads(e[len("data: ") :]) for e in relayed if e.startswith("data: {")]
    assert all(e["model"] == "bytes" for e in events)
    assert ("usage" in events[-1] and events[-1]["usage"]["total_tokens"] == 12) is include_usage
    assert all("usage" not in e for e in events[:3]) is not include_usage


@pytest.mark.django_db
def test_a_stream_cut_before_its_usage_is_billed_from_the_text_of_chunks_relayed_as_bytes(
    api: Api, catalog: Catalog
) -> None:
    words = ["alpha", " beta", " gamma", " delta", " epsilon"]
    server = raw_stream([compact(content(w)) for w in words], ended=False)
    catalog.add_http_model("cut", Upstream(base_url=f"http://127.0.0.1:{server.port}/v1", port=server.port), "up")

    response = api.chat({"model": "cut", "messages": user("hi"), "stream": True})

    relayed = sse_events(response)
    assert relayed[-1]["error"]["code"] == "upstream_bad_response"  # cut short: an SSE error event
    row = UsageRecord.objects.get()
    assert row.usage_estimated
    assert row.output_tokens == tokens.count("".join(words))


@pytest.mark.django_db
def test_chunks_that_need_more_than_the_model_replaced_are_parsed_as_before(api: Api, catalog: Catalog) -> None:
    # An empty first choice list (Azure's prompt filter chunk), usage mid-stream, and a
    # spaced-out layout: each takes the parsed path, and the client sees what it always did
    chunks = [
        compact({**CHUNK, "choices": [], "prompt_filter_results": []}),
        compact(content("one")),
        json.dumps(content(" two")),  # spaces after the colons
        compact({**content(" three"), "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}}),
    ]
    server = raw_stream(chunks)
    catalog.add_http_model("mixed", Upstream(base_url=f"http://127.0.0.1:{server.port}/v1", port=server.port), "up")

    events = sse_events(api.chat({"model": "mixed", "messages": user("hi"), "stream": True}))

    assert [e["choices"][0]["delta"]["content"] for e in events[:-1]] == ["one", " two", " three"]
    assert all(e["model"] == "mixed" and "usage" not in e for e in events[:-1])
    row = UsageRecord.objects.get()
    assert (row.input_tokens, row.output_tokens, row.usage_estimated) == (4, 3, False)


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@pytest.mark.django_db
def test_chunks_that_arrive_together_go_out_to_the_client_in_one_write(api: Api, catalog: Catalog) -> None:
    # Given a provider whose three content chunks reach Tollway in one read (a busy worker
    # reads a stream less often than the provider writes it), each in its own HTTP chunk
    words = ["one", " two", " three", " four"]
    events = [compact(content(w)) for w in words]
    usage = compact({**CHUNK, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}})
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    together = b"".join(chunked(b"data: %s\n\n" % e.encode()) for e in events[1:])
    ending = chunked(b"data: %s\n\ndata: [DONE]\n\n" % usage.encode()) + b"0\r\n\r\n"
    server = RawServer(pieces=[head, chunked(b"data: %s\n\n" % events[0].encode()), together, ending], pause=0.2)
    catalog.add_http_model("together", Upstream(base_url=f"http://127.0.0.1:{server.port}/v1", port=server.port), "up")

    response = api.chat({"model": "together", "messages": user("hi"), "stream": True})
    writes = list(response.streaming_content)

    # Then the three go out in one write, in order, each as the provider sent it but for the model
    expected = b"".join(
        b"data: %s\n\n" % e.replace('"model":"up"', '"model":"together"').replace(',"usage":null', "").encode()
        for e in events[1:]
    )
    assert writes[1] == expected
    assert writes[-1] == b"data: [DONE]\n\n"
    # And the call is billed from the provider's usage
    row = UsageRecord.objects.get()
    assert (row.input_tokens, row.output_tokens, row.usage_estimated) == (5, 4, False)
