"""The upstream connection pool (proxy.upstream.Pool), against real loopback servers:
connections are reused, idle ones are capped, one the server closed or whose keep-alive
ran out is never used, and a full pool makes calls wait, then fail cleanly."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy import upstream
from proxy.upstream import Pool
from tests.rawhttp import RawServer


@pytest.fixture
def fresh_transport(monkeypatch: pytest.MonkeyPatch, settings: object) -> Iterator[None]:
    monkeypatch.setattr(upstream, "_transport", None)
    yield
    if upstream._transport is not None:
        upstream._transport.close()


def call(url: str, *, pool_timeout: float = 5) -> int:
    timeout = {"connect": 5, "read": 5, "write": 5, "pool": pool_timeout}
    response = upstream.post(url, content=b"{}", headers={}, timeout=timeout)
    try:
        response.read()
    finally:
        response.close()
    return response.status_code


def all_at_once(server: RawServer, calls: int) -> list[int]:
    """``calls`` calls in flight together: the server holds every answer until it has
    accepted one connection per call. Their statuses."""
    server.release.clear()
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(call(server.url))) for _ in range(calls)]
    for thread in threads:
        thread.start()
    for _ in range(100):
        if server.accepted >= calls:
            break
        threading.Event().wait(0.05)
    server.release.set()
    for thread in threads:
        thread.join(10)
    return results


def pool() -> Pool:
    found = upstream.pool()
    assert isinstance(found, Pool)
    assert upstream.transport().pool is found
    return found


def test_sequential_calls_reuse_one_connection(fresh_transport: None) -> None:
    server = RawServer()
    assert [call(server.url) for _ in range(20)] == [200] * 20
    assert server.accepted == 1
    assert pool().idle_count == 1


def test_idle_connections_are_capped_at_the_keepalive_limit(
    fresh_transport: None, settings: pytest.FixtureRequest
) -> None:
    settings.TOLLWAY = {**settings.TOLLWAY, "UPSTREAM_MAX_KEEPALIVE": 3}  # type: ignore[attr-defined]
    server = RawServer()
    assert all_at_once(server, 8) == [200] * 8
    assert server.accepted == 8, "eight calls at once need eight connections"
    assert pool().idle_count == 3, "the other five closed as their responses did"
    call(server.url)
    assert server.accepted == 8, "the next call reuses an idle one"
    assert pool().idle_count == 3


def test_a_connection_the_server_closed_is_never_reused(fresh_transport: None) -> None:
    server = RawServer(hang_up=True)
    for _ in range(6):
        # Sent on the last call's socket, whose FIN has arrived while the pool held it
        # as idle, this call would fail: it gets a new connection instead.
        assert call(server.url) == 200
        threading.Event().wait(0.1)
    assert server.accepted == 6


def test_a_full_pool_queues_the_next_call_until_one_is_free(fresh_transport: None, settings: object) -> None:
    settings.TOLLWAY = {**settings.TOLLWAY, "UPSTREAM_MAX_CONNECTIONS": 2}  # type: ignore[attr-defined]
    server = RawServer()
    server.release.clear()
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(call(server.url))) for _ in range(5)]
    for thread in threads:
        thread.start()
    # two connections open (however long a loaded machine takes), and no third follows
    deadline = time.monotonic() + 10
    while server.accepted < 2 and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    threading.Event().wait(0.3)
    assert server.accepted == 2, "never more than max_connections"
    server.release.set()
    for thread in threads:
        thread.join(10)
    assert results == [200] * 5
    assert server.accepted == 2


def test_a_call_that_waits_too_long_for_a_connection_fails_with_a_pool_timeout(
    fresh_transport: None, settings: object
) -> None:
    settings.TOLLWAY = {**settings.TOLLWAY, "UPSTREAM_MAX_CONNECTIONS": 1}  # type: ignore[attr-defined]
    server = RawServer()
    held = upstream.post(
        server.url, content=b"{}", headers={}, timeout={"connect": 5, "read": 5, "write": 5, "pool": 5}
    )
    with pytest.raises(httpx.PoolTimeout):
        call(server.url, pool_timeout=0.2)
    held.read()
    held.close()
    assert call(server.url, pool_timeout=0.2) == 200, "the slot came back with the response"
    assert server.accepted == 1


def test_an_idle_connection_past_its_keepalive_is_not_reused(
    fresh_transport: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upstream, "KEEPALIVE_EXPIRY", 0.1)
    server = RawServer()
    assert call(server.url) == 200
    threading.Event().wait(0.3)
    assert call(server.url) == 200
    assert server.accepted == 2
    assert pool().idle_count == 1, "the expired one was closed, not kept"


STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
DONE_CHUNK = b"e\r\ndata: [DONE]\n\n\r\n"


def stop_at_done(url: str) -> float:
    """Read a stream up to its [DONE] event, then close it, as the relay does; how long
    the close took."""
    response = upstream.post(url, content=b"{}", headers={}, timeout={"connect": 5, "read": 5, "write": 5, "pool": 5})
    assert next(iter(response.stream)) == b"data: [DONE]\n\n"  # type: ignore[arg-type]
    started = time.monotonic()
    response.close()
    return time.monotonic() - started


def test_a_stream_closed_at_its_done_event_keeps_its_connection(fresh_transport: None) -> None:
    # The closing chunk comes just after [DONE], as it does from a real server.
    server = RawServer(pieces=[STREAM_HEAD + DONE_CHUNK, b"0\r\n\r\n"], pause=0.01)
    for _ in range(3):
        stop_at_done(server.url)
    assert server.accepted == 1, "each close read the closing chunk, so the connection went back idle"
    assert pool().idle_count == 1


def test_a_body_that_does_not_end_soon_closes_its_connection_at_once(fresh_transport: None) -> None:
    server = RawServer(pieces=[STREAM_HEAD + DONE_CHUNK, b"0\r\n\r\n"], pause=2)
    assert stop_at_done(server.url) < 0.5
    assert pool().idle_count == 0
    server.pause = 0
    assert stop_at_done(server.url) < 0.5
    assert server.accepted == 2


def test_calls_still_fail_cleanly_when_nothing_listens(fresh_transport: None, settings: object) -> None:
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    settings.TOLLWAY = {**settings.TOLLWAY, "UPSTREAM_MAX_CONNECTIONS": 1}  # type: ignore[attr-defined]
    for _ in range(3):  # each failure gives its slot back: a one-connection pool still works
        with pytest.raises(httpx.ConnectError):
            call(f"http://127.0.0.1:{port}/v1", pool_timeout=0.5)
    assert pool().idle_count == 0


def test_a_request_leaves_in_one_send(fresh_transport: None, monkeypatch: pytest.MonkeyPatch) -> None:
    sends: list[bytes] = []
    real_sendall = socket.socket.sendall

    def counting_sendall(self: socket.socket, data: bytes, flags: int = 0) -> None:
        if not bytes(data).startswith(b"HTTP/"):  # not the server's answer
            sends.append(bytes(data))
        real_sendall(self, data, flags)

    monkeypatch.setattr(socket.socket, "sendall", counting_sendall)
    server = RawServer()
    body = b'{"model": "m", "messages": []}'
    response = upstream.post(
        server.url, content=body, headers={}, timeout={"connect": 5, "read": 5, "write": 5, "pool": 5}
    )
    response.read()
    response.close()
    assert response.status_code == 200
    assert len(sends) == 1, "headers and body together"
    assert sends[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n") and sends[0].endswith(b"\r\n\r\n" + body)


def test_a_server_that_answers_and_hangs_up_before_the_body_is_still_heard(fresh_transport: None) -> None:
    # An upstream refusing a request at once (here a 413) may close before reading it.
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    def refuse() -> None:
        conn, _ = sock.accept()
        with conn:
            conn.recv(100)
            conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            conn.shutdown(socket.SHUT_WR)
            time.sleep(0.3)

    threading.Thread(target=refuse, daemon=True).start()
    big = b"x" * (8 * 1024 * 1024)
    response = upstream.post(
        f"http://127.0.0.1:{port}/v1", content=big, headers={}, timeout={"connect": 5, "read": 5, "write": 5, "pool": 5}
    )
    response.close()
    assert response.status_code == 413
    sock.close()


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A certificate for 127.0.0.1: the server's TLS context, and a client's that trusts it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    return server, client


def test_https_upstreams_are_verified_and_their_connections_reused(
    fresh_transport: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server_tls, client_tls = self_signed(tmp_path)
    server = RawServer(tls=server_tls)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        call(server.url)  # the public CA bundle does not know this certificate
    upstream.transport().close()
    monkeypatch.setattr(upstream, "_transport", None)
    monkeypatch.setattr(httpx, "create_ssl_context", lambda **_: client_tls)
    assert [call(server.url) for _ in range(5)] == [200] * 5
    assert server.accepted == 2, "one refused handshake, then one connection for all five"
    assert pool().idle_count == 1


def test_a_private_ca_bundle_is_trusted_beside_the_public_ones(
    fresh_transport: None, settings: Any, tmp_path: Path
) -> None:
    server_tls, _ = self_signed(tmp_path)
    server = RawServer(tls=server_tls)
    settings.TOLLWAY = {**settings.TOLLWAY, "UPSTREAM_CA_BUNDLE": str(tmp_path / "cert.pem")}
    assert [call(server.url) for _ in range(3)] == [200] * 3
    assert server.accepted == 1


def test_idle_connections_left_past_their_keepalive_all_close_on_the_next_call(
    fresh_transport: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upstream, "KEEPALIVE_EXPIRY", 0.2)
    server = RawServer()
    assert all_at_once(server, 4) == [200] * 4
    assert pool().idle_count == 4
    threading.Event().wait(0.4)  # traffic stops; all four outlive their keep-alive
    assert call(server.url) == 200
    assert server.accepted == 5
    assert pool().idle_count == 1, "the four stale ones closed at once, the new one kept"


def test_a_body_that_stalls_fails_with_httpx_read_timeout(fresh_transport: None) -> None:
    # The adapters catch httpx's errors: a stall mid-body must be one, not httpcore's.
    server = RawServer(pieces=[STREAM_HEAD + DONE_CHUNK, b"0\r\n\r\n"], pause=2)
    response = upstream.post(server.url, content=b"{}", headers={}, timeout={"connect": 5, "read": 0.2, "write": 5})
    with pytest.raises(httpx.ReadTimeout):
        response.read()
    response.close()
    assert pool().idle_count == 0, "a connection that timed out mid-body is not reused"


def test_the_transport_serves_httpx_own_client(fresh_transport: None) -> None:
    # A public httpx.BaseTransport: nothing of httpx's private parts, so an httpx release
    # that keeps its public API keeps the pool working.
    server = RawServer()
    with httpx.Client(transport=upstream.transport()) as client:
        responses = [client.post(server.url, content=b"{}") for _ in range(3)]
    assert [r.status_code for r in responses] == [200] * 3
    assert [r.json() for r in responses] == [{}] * 3
    assert server.accepted == 1
