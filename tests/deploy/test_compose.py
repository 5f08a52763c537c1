"""The Docker deployment, checked structurally (no Docker engine runs here): compose's
services, healthchecks and replicas, Redis's eviction policy, the image, and that nginx in
Docker gets a value for every placeholder of the template the local stack also renders."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

DOCKER = ROOT / "docker"
TEMPLATE = ROOT / "nginx" / "nginx.conf.template"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DOCKER / "compose.yaml").read_text()))


def default(value: Any) -> str:
    """The default of a ``${VAR:-default}`` value, else the value itself."""
    match = re.fullmatch(r"\$\{\w+:-([^}]*)\}", str(value))
    return match.group(1) if match else str(value)


def test_services_and_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"nginx", "web", "worker", "beat", "migrate", "postgres", "redis", "certbot"}
    for name in ("nginx", "web", "worker", "postgres", "redis"):
        check = services[name]["healthcheck"]
        assert check["test"] and not check.get("disable"), name
    assert "/health" in " ".join(services["web"]["healthcheck"]["test"])
    assert services["nginx"]["depends_on"]["web"]["condition"] == "service_healthy"


def test_web_has_two_replicas_and_beat_exactly_one(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert default(services["web"]["deploy"]["replicas"]) == "2"
    assert services["beat"]["deploy"]["replicas"] == 1
    assert services["beat"]["command"] == ["beat"]


def test_migrations_run_once_before_the_app(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["migrate"] and services["migrate"]["restart"] == "no"
    for name in ("web", "worker", "beat"):
        assert services[name]["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
    for name in ("postgres", "redis"):
        assert services["migrate"]["depends_on"][name]["condition"] == "service_healthy"
    entrypoint = (DOCKER / "entrypoint.sh").read_text()
    assert "manage.py migrate" in entrypoint and "collectstatic" in entrypoint
    assert entrypoint.count("manage.py migrate") == 1


def test_app_trusts_nginx_request_ids_and_shares_static_files(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("migrate", "web", "worker", "beat"):
        env = services[name]["environment"]
        assert env["TOLLWAY_TRUST_REQUEST_ID"] == "1" and env["DEBUG"] == "0"
        assert env["REDIS_URL"].startswith("redis://redis:") and "@postgres:5432/" in env["DATABASE_URL"]
    assert "static:/srv/static" in services["migrate"]["volumes"]
    assert "static:/srv/static:ro" in services["nginx"]["volumes"]
    assert int(default(services["web"]["stop_grace_period"].rstrip("s"))) > 120  # > graceful_timeout


def test_datastores_persist_and_redis_never_evicts(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["image"] == "postgres:16"
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert services["redis"]["image"] == "redis:7"
    command = [str(part) for part in services["redis"]["command"]]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "redisdata:/data" in services["redis"]["volumes"]


def test_certbot_is_optional(compose: dict[str, Any]) -> None:
    certbot = compose["services"]["certbot"]
    assert certbot["profiles"] == ["certbot"]
    assert "certbot renew" in " ".join(certbot["entrypoint"])


def test_nginx_in_docker_fills_every_template_placeholder(compose: dict[str, Any]) -> None:
    nginx = compose["services"]["nginx"]
    env = nginx["environment"]
    needed = set(re.findall(r"\$\{(TOLLWAY_[A-Z0-9_]+)\}", TEMPLATE.read_text()))
    assert needed <= set(env), f"compose gives nginx no value for {sorted(needed - set(env))}"
    assert env["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx" and env["NGINX_ENVSUBST_FILTER"] == "^TOLLWAY_"
    assert "../nginx/nginx.conf.template:/etc/nginx/templates/nginx.conf.template:ro" in nginx["volumes"]
    assert "least_conn" not in env["TOLLWAY_NGINX_UPSTREAM_SERVERS"]
    assert env["TOLLWAY_NGINX_UPSTREAM_SERVERS"].startswith("server web:8000 ")


def test_env_example_covers_what_compose_requires(compose: dict[str, Any]) -> None:
    text = (DOCKER / "compose.yaml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    example = {
        line.split("=", 1)[0]
        for line in (DOCKER / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert required <= example and "SECRET_KEY" in example


def test_dockerfile_is_multi_stage_slim_non_root_with_a_healthcheck() -> None:
    lines = [line.strip() for line in (DOCKER / "Dockerfile").read_text().splitlines()]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) >= 2 and all(line.startswith("FROM python:3.11-slim") for line in stages)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK") for line in lines)
    assert "/health" in (DOCKER / "Dockerfile").read_text()
    assert Path(DOCKER / "entrypoint.sh").stat().st_mode & 0o111
