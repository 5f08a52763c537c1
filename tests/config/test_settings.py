"""Settings come from the environment through one reader, in two profiles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.env import Env
from tests.conftest import ROOT

PROBE = """
import json, django
from django.conf import settings
django.setup()
from config.celery import app
db = settings.DATABASES["default"]
print(json.dumps({
    "engine": db["ENGINE"], "name": str(db["NAME"]), "pool": db.get("OPTIONS", {}).get("pool"),
    "prepare_threshold": db.get("OPTIONS", {}).get("prepare_threshold"),
    "server_side_cursors": not db.get("DISABLE_SERVER_SIDE_CURSORS"),
    "conn_max_age": db.get("CONN_MAX_AGE"), "cache": settings.CACHES["default"]["BACKEND"],
    "eager": settings.CELERY_TASK_ALWAYS_EAGER, "broker": app.conf.broker_url, "debug": settings.DEBUG,
}))
"""


def settings_with(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        # Not this checkout's var/, whose local.env (from `make run`) would stand in for DEBUG and SECRET_KEY.
        "TOLLWAY_VAR_DIR": tempfile.mkdtemp(prefix="settings-"),
    }
    return subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, cwd=ROOT, capture_output=True, text=True, timeout=180
    )


def test_nothing_set_gives_the_embedded_default(tmp_path: os.PathLike[str]) -> None:
    result = settings_with({"DEBUG": "1", "TOLLWAY_VAR_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["engine"] == "django.db.backends.sqlite3"
    assert found["name"].startswith(str(tmp_path))
    assert found["cache"].endswith("LocMemCache")
    assert found["eager"] is True


def test_urls_give_the_production_profile() -> None:
    result = settings_with(
        {
            "DATABASE_URL": "postgres://u:p@db.internal:5432/tollway",
            "REDIS_URL": "redis://cache.internal:6379/2",
            "SECRET_KEY": "x" * 50,
            "DB_POOL_MAX_SIZE": "16",
        }
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["engine"] == "django.db.backends.postgresql"
    assert found["pool"]["max_size"] == 16
    assert found["conn_max_age"] == 0
    assert found["cache"] == "django_redis.cache.RedisCache"
    assert found["eager"] is False
    assert found["broker"] == "redis://cache.internal:6379/2"
    assert found["debug"] is False
    assert found["prepare_threshold"] == 1, "the ledger insert is prepared"
    assert found["server_side_cursors"] is True
    # Behind a transaction pooler (tests/config/test_pooler.py shows why)
    pooler = settings_with(
        {
            "DATABASE_URL": "postgres://u:p@pgbouncer:6432/t",
            "SECRET_KEY": "x" * 50,
            "DB_PREPARED_STATEMENTS": "0",
            "DB_SERVER_SIDE_CURSORS": "0",
        }
    )
    assert json.loads(pooler.stdout)["prepare_threshold"] is None
    assert json.loads(pooler.stdout)["server_side_cursors"] is False


def test_redis_sentinel_and_cluster_settings() -> None:
    base = {"DATABASE_URL": "postgres://u@db/x", "SECRET_KEY": "x" * 50}
    # Sentinel: the master's name and database; Celery's broker follows the same sentinels
    sentinel = settings_with({**base, "REDIS_SENTINELS": "s1:26379,s2:26380", "REDIS_URL": "redis://:pw@mymaster/3"})
    assert sentinel.returncode == 0, sentinel.stderr
    assert json.loads(sentinel.stdout)["broker"] == "sentinel://:pw@s1:26379/3;sentinel://:pw@s2:26380/3"
    # Mistakes stop the process at start, naming the fix
    for env, message in (
        ({"REDIS_SENTINELS": "s1"}, "is not host:port"),
        ({"REDIS_CLUSTER": "1", "REDIS_URL": "redis://node-1:6379/0"}, "Set CELERY_BROKER_URL"),
        ({"REDIS_CLUSTER": "1"}, "needs REDIS_URL"),
        ({"REDIS_CLUSTER": "1", "REDIS_SENTINELS": "s1:26379"}, "one or the other"),
    ):
        refused = settings_with({**base, **env})
        assert refused.returncode != 0 and message in refused.stderr, (env, refused.stderr[-300:])
    cluster = settings_with(
        {**base, "REDIS_CLUSTER": "1", "REDIS_URL": "redis://node-1:6379/0", "CELERY_BROKER_URL": "redis://q:6379/0"}
    )
    assert cluster.returncode == 0, cluster.stderr
    assert json.loads(cluster.stdout)["broker"] == "redis://q:6379/0"


def test_secret_key_has_no_default_without_debug() -> None:
    result = settings_with({"DATABASE_URL": "postgres://u@localhost/x"})
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_reader_rejects_malformed_values() -> None:
    env = Env({"DEBUG": "maybe", "PORT": "eighty"})
    with pytest.raises(ImproperlyConfigured, match="DEBUG"):
        env.bool("DEBUG")
    with pytest.raises(ImproperlyConfigured, match="PORT"):
        env.int("PORT", 8000)
    with pytest.raises(
        ImproperlyConfigured, match=r"TOLLWAY_UPSTREAM_MAX_RESPONSE_BYTES='0' is below its minimum, 65536"
    ):
        Env({"TOLLWAY_UPSTREAM_MAX_RESPONSE_BYTES": "0"}).int("TOLLWAY_UPSTREAM_MAX_RESPONSE_BYTES", 1, minimum=65536)
    assert Env({"N": "65536"}).int("N", 1, minimum=65536) == 65536
    assert Env({}).list("HOSTS", ["a"]) == ["a"]
    assert Env({"HOSTS": "a, b,,c"}).list("HOSTS") == ["a", "b", "c"]


def test_a_size_or_count_that_cannot_be_zero_stops_the_process_at_start() -> None:
    result = settings_with({"DEBUG": "1", "TOLLWAY_UPSTREAM_MAX_RESPONSE_BYTES": "0"})
    assert result.returncode != 0
    assert "TOLLWAY_UPSTREAM_MAX_RESPONSE_BYTES='0' is below its minimum, 65536" in result.stderr
    assert settings_with({"DEBUG": "1", "TOLLWAY_UPSTREAM_MAX_RESPONSE_BYTES": "65536"}).returncode == 0


def test_a_file_setting_that_names_no_file_stops_the_process_at_start(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert Env({"TOLLWAY_UPSTREAM_CA_BUNDLE": str(bundle)}).file("TOLLWAY_UPSTREAM_CA_BUNDLE") == str(bundle)
    assert Env({}).file("TOLLWAY_UPSTREAM_CA_BUNDLE") == ""
    with pytest.raises(ImproperlyConfigured, match=r"TOLLWAY_UPSTREAM_CA_BUNDLE=.*is not a readable file"):
        Env({"TOLLWAY_UPSTREAM_CA_BUNDLE": str(tmp_path / "typo.pem")}).file("TOLLWAY_UPSTREAM_CA_BUNDLE")


def test_platform_is_the_standard_library_module() -> None:
    # Why the project package is `config`: a top-level `platform` package would shadow this.
    import platform

    assert "site-packages" not in (platform.__file__ or "")
    assert not (ROOT / "platform").exists()
    assert platform.python_version().startswith("3.11")
