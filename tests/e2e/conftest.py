"""Fixtures for tests that start real gunicorn servers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import IO, Any

import openai
import pytest
from django.conf import settings

from tests.conftest import ROOT, UPSTREAM_KEY, UPSTREAM_KEY_ENV, free_port, wait_for_http


def serve(env: dict[str, str], stdout: IO[Any] | None = None) -> tuple[subprocess.Popen[Any], str]:
    """Start gunicorn with exactly ``env`` (plus its port), as an operator would."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.py"],
        cwd=ROOT,
        env={"WEB_CONCURRENCY": "2", "GUNICORN_ACCESSLOG": "", **env, "PORT": str(port)},
        stdout=stdout,
    )
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/health", proc=proc)
    return proc, base


@pytest.fixture
def production_env(transactional_db: None, server_database: dict[str, str]) -> dict[str, str]:
    """The production profile on the test database (through PgBouncer with
    ``--via-pgbouncer``) and Redis. Tests using it commit their data (transactional_db), so
    the servers can see it."""
    return {
        "PATH": os.environ["PATH"],
        **server_database,
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": "live-test-secret",
        "DEBUG": "0",
        "ALLOWED_HOSTS": "127.0.0.1",
        UPSTREAM_KEY_ENV: UPSTREAM_KEY,
    }


@pytest.fixture
def sdk() -> Iterator[Any]:
    """Make openai SDK clients; closed afterwards so no idle keep-alive delays shutdown."""
    clients: list[openai.OpenAI] = []

    def make(base: str, key: str) -> openai.OpenAI:
        clients.append(openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=30))
        return clients[-1]

    yield make
    for client in clients:
        client.close()
