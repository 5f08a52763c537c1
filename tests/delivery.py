"""Fixtures for delivery tests: a real SMTP server (aiosmtpd) and a webhook receiver that
checks signatures, both on loopback."""

from __future__ import annotations

import email
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from billing.webhooks import SIGNATURE_HEADER, verify
from tests.conftest import free_port


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's name
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp(settings: Any) -> Iterator[Inbox]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    try:
        yield inbox
    finally:
        controller.stop()


@dataclass
class Receiver:
    """A webhook endpoint: checks each signature with its secret; fails the first ``fail`` POSTs."""

    url: str
    secrets: dict[str, str] = field(default_factory=dict)  # path -> secret
    fail: int = 0
    received: list[tuple[str, dict[str, Any], bool]] = field(default_factory=list)  # path, body, signature ok


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    port = free_port()
    state = Receiver(url=f"http://127.0.0.1:{port}")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            ok = verify(secret=state.secrets.get(self.path, ""), header=self.headers[SIGNATURE_HEADER], body=body)
            state.received.append((self.path, json.loads(body), ok))
            failing = state.fail > 0
            state.fail -= 1
            self.send_response(500 if failing or not ok else 200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
