"""The upstream connection pool (proxy.upstream.LinearPool), against real loopback servers:
connections are reused, idle ones are capped, and one the server closed is never used."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpcore
import httpx
import pytest

from proxy import upstream
from proxy.upstream import LinearPool

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class Server:
    """HTTP/1.1 on loopback that answers every request with ``{}`` and keeps the
    connection, or, with ``hang_up`` set, closes it after answering without saying so
    (as an upstream does when its own keep-alive runs out)."""

    def __init__(self, *, hang_up: bool = False) -> None:
        self.hang_up = hang_up
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.release = threading.Event()
        self.release.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                while len(buffer) < length:  # read the body, so a hang-up is a clean FIN
                    buffer += conn.recv(65536)
                buffer = buffer[length:]
                self.release.wait(10)
                conn.sendall(RESPONSE)
                if self.hang_up:
                    return

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"


@pytest.fixture
def fresh_transport(monkeypatch: pytest.MonkeyPatch, settings: object) -> Iterator[None]:
    monkeypatch.setattr(upstream, "_transport", None)
    yield
    if upstream._transport is not None:
        upstream._transport.close()


def call(url: str) -> int:
    response = upstream.post(url, content=b"{}", headers={}, timeout={"connect": 5, "read": 5, "write": 5, "pool": 5})
    try:
        response.read()
    finally:
        response.close()
    return response.status_code


def pool() -> LinearPool:
    found = upstream.transport()._pool
    assert isinstance(found, LinearPool)
    return found


def test_sequential_calls_reuse_one_connection(fresh_transport: None) -> None:
    server = Server()
    assert [call(server.url) for _ in range(20)] == [200] * 20
    assert server.accepted == 1
    assert len(pool().connections) == 1


def test_idle_connections_are_capped_at_the_keepalive_limit(
    fresh_transport: None, settings: pytest.FixtureRequest
) -> None:
    settings.TOLLWAY = {**settings.TOLLWAY, "UPSTREAM_MAX_KEEPALIVE": 3}  # type: ignore[attr-defined]
    server = Server()
    server.release.clear()  # hold every answer until all eight calls are in flight
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(call(server.url))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for _ in range(100):
        if server.accepted == 8:
            break
        threading.Event().wait(0.05)
    server.release.set()
    for thread in threads:
        thread.join(10)
    assert results == [200] * 8
    assert server.accepted == 8, "eight calls at once need eight connections"
    call(server.url)  # the next call's pass trims the idle ones to the limit, and reuses one
    assert server.accepted == 8
    assert len(pool().connections) == 3


def test_a_connection_the_server_closed_is_never_reused(fresh_transport: None) -> None:
    server = Server(hang_up=True)
    for _ in range(6):
        # Sent on the last call's socket, whose FIN has arrived while the pool held it
        # as idle, this call would fail: it gets a new connection instead.
        assert call(server.url) == 200
        threading.Event().wait(0.1)
    assert server.accepted == 6


def test_a_full_pool_queues_the_next_call_until_one_is_free(fresh_transport: None, settings: object) -> None:
    settings.TOLLWAY = {**settings.TOLLWAY, "UPSTREAM_MAX_CONNECTIONS": 2}  # type: ignore[attr-defined]
    server = Server()
    server.release.clear()
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(call(server.url))) for _ in range(5)]
    for thread in threads:
        thread.start()
    threading.Event().wait(0.3)
    assert server.accepted == 2, "never more than max_connections"
    server.release.set()
    for thread in threads:
        thread.join(10)
    assert results == [200] * 5
    assert server.accepted == 2
    assert isinstance(upstream.transport()._pool, httpcore.ConnectionPool)


def test_calls_still_fail_cleanly_when_nothing_listens(fresh_transport: None) -> None:
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        call(f"http://127.0.0.1:{port}/v1")
    assert pool().connections == []
