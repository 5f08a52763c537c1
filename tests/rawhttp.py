"""A raw HTTP/1.1 server on loopback for upstream tests: it answers every request with
bytes given verbatim, so a test controls framing, chunk boundaries and hang-ups."""

from __future__ import annotations

import socket
import ssl
import threading
import time

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class RawServer:
    """Answers every request with ``pieces`` (by default ``{}``), ``pause`` seconds apart,
    and keeps the connection; with ``hang_up`` set it closes it after answering without
    saying so (as an upstream does when its own keep-alive runs out)."""

    def __init__(
        self,
        *,
        hang_up: bool = False,
        pieces: list[bytes] | None = None,
        pause: float = 0.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.hang_up = hang_up
        self.tls = tls
        self.pieces = pieces or [RESPONSE]
        self.pause = pause  # between the pieces of an answer
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
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):  # the client refused the certificate
                conn.close()
                return
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
                for i, piece in enumerate(self.pieces):
                    if i:
                        time.sleep(self.pause)
                    conn.sendall(piece)
                if self.hang_up:
                    return

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/v1/chat/completions"
