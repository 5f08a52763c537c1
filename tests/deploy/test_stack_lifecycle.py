"""``make stack``'s process supervision (supervisord): N replicas behind nginx, and a start
that fails part-way leaves nothing running."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Catalog
from tests.deploy.conftest import nginx_binary, stack_config, start_stack, stop_stack

pytestmark = pytest.mark.live


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_make_stack_passes_replicas_on() -> None:
    dry = subprocess.run(
        ["make", "-n", "stack", "REPLICAS=4"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
    )
    assert "docker/stack.py up --replicas 4" in dry.stdout


@pytest.mark.django_db(transaction=True)
def test_four_replicas_behind_nginx_each_serve(server_database: dict[str, str], catalog: Catalog, key: Any) -> None:
    # given `make stack REPLICAS=4`, its workers per replica counted as make stack counts them
    stack = start_stack(database=server_database, replicas=4, WEB_CONCURRENCY="")
    try:
        # then nginx's upstream block names the four replicas, and supervisord runs them all
        conf = (stack.dir / "nginx" / "nginx.conf").read_text()
        for port in stack.web_ports:
            assert f"server 127.0.0.1:{port} max_fails=3" in conf
        states = stack.processes()
        assert {name: p["state"] for name, p in states.items() if name.startswith("web-")} == {
            f"web-{i}": "RUNNING" for i in range(1, 5)
        }
        # and calls through nginx reach every replica, each authenticating against the database
        client = stack.client(headers={"Authorization": f"Bearer {key.plaintext}"})
        ids = []
        for _ in range(12):
            response = client.get("/v1/models")
            assert response.status_code == 200
            ids.append(response.headers["x-request-id"])
        served_by = {stack.logged(request_id)["upstream_addr"] for request_id in ids}
        assert served_by == {f"127.0.0.1:{port}" for port in stack.web_ports}
    finally:
        stop_stack(stack)
    # and `down` stopped every one of them
    assert not any(listening(port) for port in stack.web_ports)


def test_a_stack_whose_nginx_fails_to_start_stops_everything_it_started(
    server_database: dict[str, str], tmp_path: Path
) -> None:
    # given an nginx that passes `nginx -t` but dies at start (a port taken, a bad certificate...)
    real = nginx_binary()
    if real is None:
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run does it)")
    fake = tmp_path / "nginx"
    script = f'#!/bin/sh\ncase " $* " in *" -t "*) exec "{real}" "$@";; esac\necho "nginx: cannot start" >&2\nexit 1\n'
    fake.write_text(script)
    fake.chmod(0o755)
    stack = stack_config(database=server_database, replicas=2, TOLLWAY_STACK_NGINX=str(fake))
    try:
        # when the stack starts: the replicas, the worker and beat come up, then nginx fails
        result = stack.run("up")

        # then `up` says so and fails, and nothing it started is left running
        assert result.returncode == 1
        assert "nginx exited" in result.stderr and "stopping what started" in result.stderr
        assert "nginx: cannot start" in (stack.dir / "logs" / "nginx.log").read_text()
        assert (stack.dir / "logs" / "web-1.log").exists(), "the replicas had started"
        assert not any(listening(port) for port in stack.web_ports)
        assert stack.run("status").stdout.strip() == "stack: not running"
        pid = int((stack.dir / "supervisord.pid").read_text()) if (stack.dir / "supervisord.pid").exists() else 0
        assert not pid or not Path(f"/proc/{pid}").exists()
    finally:
        stop_stack(stack)


def test_a_stack_without_nginx_starts_nothing(server_database: dict[str, str]) -> None:
    stack = stack_config(database=server_database, replicas=2, TOLLWAY_STACK_NGINX="/nonexistent/nginx")
    try:
        result = stack.run("up")
        assert result.returncode == 1
        assert "nginx is not installed (apt-get install nginx); nothing was started" in result.stderr
        assert not (stack.dir / "supervisord.conf").exists()
        assert not any(listening(port) for port in stack.web_ports)
    finally:
        stop_stack(stack)
