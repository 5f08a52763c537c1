"""The local production stack (docker/stack.py, under supervisord) as the end-to-end tests
drive it: real nginx on loopback in front of real gunicorn replicas, a Celery worker and
beat, on the test database and Redis, started on free ports in a state directory of its own."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
from django.conf import settings

from proxy.models import Deployment, Provider
from tests.conftest import ROOT, UPSTREAM_KEY, UPSTREAM_KEY_ENV, Upstream, free_port, stop, wait_for_http

STACK = ROOT / "docker" / "stack.py"


def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)


@dataclass
class Stack:
    dir: Path
    env: dict[str, str]
    http_port: int
    https_port: int
    web_ports: list[int]
    clients: list[Any] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def ca(self) -> Path:
        return self.dir / "tls" / "ca.pem"

    def tls(self) -> ssl.SSLContext:
        """Verify nginx against the stack's own development CA, as a client would."""
        return ssl.create_default_context(cafile=str(self.ca))

    def client(self, **kwargs: Any) -> httpx.Client:
        client = httpx.Client(base_url=self.base, verify=self.tls(), timeout=30, **kwargs)
        self.clients.append(client)
        return client

    def sdk(self, api_key: str, prefix: str = "/v1") -> openai.OpenAI:
        """The official SDK (its own HTTP client, httpx2), verifying nginx's certificate."""
        http = httpx2.Client(verify=self.tls(), timeout=30)
        self.clients.append(http)
        return openai.OpenAI(base_url=f"{self.base}{prefix}", api_key=api_key, http_client=http, max_retries=0)

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(STACK), *args],
            cwd=ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def processes(self) -> dict[str, Any]:
        """supervisord's view: {name: {"state": "RUNNING", "pid": N}}."""
        return dict(json.loads(self.run("status", "--json").stdout or "{}"))

    def kill(self, name: str) -> None:
        """SIGKILL a process group, as a crashed container dies: master and workers at once."""
        pid = self.processes()[name]["pid"]
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _running(pid):
            time.sleep(0.05)
        assert not _running(pid), f"{name} survived SIGKILL"

    def access_log(self) -> list[dict[str, Any]]:
        path = self.dir / "logs" / "nginx-access.log"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def logged(self, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """nginx's access log line for ``request_id`` (written when the response ends)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [e for e in self.access_log() if e["request_id"] == request_id]
            if lines or time.monotonic() > deadline:
                assert len(lines) == 1, f"{len(lines)} access log lines for {request_id}"
                return lines[0]
            time.sleep(0.05)

    def close(self) -> None:
        for client in self.clients:
            client.close()


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def stack(server_database: dict[str, str]) -> Iterator[Stack]:
    """``docker/stack.py up`` on free ports against the test database; ``down`` after."""
    started = start_stack(database=server_database, replicas=2)
    try:
        yield started
    finally:
        stop_stack(started)


def start_stack(*, database: dict[str, str], replicas: int, **extra: str) -> Stack:
    """A stack of ``replicas`` gunicorn replicas in a state directory of its own (skipped
    where nginx is not installed)."""
    if nginx_binary() is None:
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run does it)")
    stack = stack_config(database=database, replicas=replicas, **extra)
    started = stack.run("up", "--replicas", str(replicas))
    if started.returncode != 0:
        stop_stack(stack)
        pytest.fail(f"stack up failed:\n{started.stdout}\n{started.stderr}")
    return stack


def stop_stack(stack: Stack) -> None:
    stack.close()
    stopped = stack.run("down")
    shutil.rmtree(stack.dir, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr


def stack_config(*, database: dict[str, str], replicas: int, **extra: str) -> Stack:
    """The environment of a stack on free ports against the test database (``database``:
    the ``server_database`` fixture's environment) and Redis."""
    (ROOT / "var").mkdir(exist_ok=True)
    state_dir = Path(tempfile.mkdtemp(prefix="stack-test-", dir=ROOT / "var"))
    web_ports = [free_port() for _ in range(replicas)]
    http_port, https_port = free_port(), free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        **database,
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": "stack-test-secret",
        "WEB_CONCURRENCY": "1",
        # Each test flushes the database and Redis: replicas must not trust a copy of a key
        # or a route from the previous test even for a second.
        "TOLLWAY_LOCAL_CACHE_SECONDS": "0",
        "TOLLWAY_STACK_DIR": str(state_dir),
        "TOLLWAY_STACK_CERT_DIR": str(state_dir / "tls"),
        "TOLLWAY_STACK_HTTP_PORT": str(http_port),
        "TOLLWAY_STACK_HTTPS_PORT": str(https_port),
        "TOLLWAY_STACK_WEB_PORTS": ",".join(map(str, web_ports)),
        "TOLLWAY_STACK_SEED": "0",
        "TOLLWAY_STACK_CELERY_CONCURRENCY": "1",
        "TOLLWAY_STACK_STOP_TIMEOUT": "15",
        UPSTREAM_KEY_ENV: UPSTREAM_KEY,
        **extra,
    }
    return Stack(dir=state_dir, env=env, http_port=http_port, https_port=https_port, web_ports=web_ports)


@pytest.fixture(scope="module")
def mock_server() -> Iterator[Callable[..., Upstream]]:
    """Start ``python -m tests.mockupstream`` with pacing flags; all stopped afterwards."""
    procs: list[subprocess.Popen[Any]] = []

    def start(*flags: str) -> Upstream:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.mockupstream", "--port", str(port), "--api-key", UPSTREAM_KEY, *flags],
            cwd=ROOT,
        )
        procs.append(proc)
        wait_for_http(f"http://127.0.0.1:{port}/health", proc=proc)
        return Upstream(base_url=f"http://127.0.0.1:{port}/v1", port=port)

    yield start
    for proc in procs:
        stop(proc)


def serve_model(catalog: Any, name: str, upstream: Upstream, upstream_model: str = "gpt-4.1") -> None:
    """A priced model served by ``upstream`` through a provider of its own."""
    from decimal import Decimal

    from billing.models import Model, Price

    provider = Provider.objects.create(
        name=f"loopback-{upstream.port}",
        kind=Provider.Kind.OPENAI,
        base_url=upstream.base_url,
        api_key_env=UPSTREAM_KEY_ENV,
    )
    model = Model.objects.create(name=name)
    Price.objects.create(model=model, input_per_mtok=Decimal("8"), output_per_mtok=Decimal("32"))
    Deployment.objects.create(model=model, provider=provider, upstream_model=upstream_model)
    catalog.models[name] = model


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """An error in OpenAI's shape, as the openai SDK parses it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["message"]
    return dict(error)
