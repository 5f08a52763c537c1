"""var/local.env: `make run` writes it once, every command from the checkout reads it, and
production (DEBUG off, or no file) never does. Setting errors read as one clear line."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from config.localenv import local_env_ensure, local_env_read
from tests.conftest import ROOT

PROBE = """
import json, django
from django.conf import settings
django.setup()
from config.celery import app
print(json.dumps({
    "debug": settings.DEBUG, "secret": settings.SECRET_KEY, "eager": settings.CELERY_TASK_ALWAYS_EAGER,
    "broker": app.conf.broker_url, "email": settings.EMAIL_BACKEND, "mail_dir": settings.EMAIL_FILE_PATH,
}))
"""


def write_local_env(var: Path) -> None:
    """What `make run` does first."""
    env = {**os.environ, "TOLLWAY_VAR_DIR": str(var)}
    subprocess.run([sys.executable, "-m", "config.localenv"], cwd=ROOT, env=env, check=True, timeout=60)


def manage(var: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "TOLLWAY_VAR_DIR": str(var)}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def probe(var: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "TOLLWAY_VAR_DIR": str(var)}
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_written_once_private_and_completed_never_changed(tmp_path: Path) -> None:
    path = tmp_path / "local.env"
    assert local_env_ensure(path=path) == ["DEBUG", "SECRET_KEY", "TOLLWAY_LOCAL_WORKER", "EMAIL_BACKEND"]
    first = local_env_read(path)
    assert first["DEBUG"] == "1" and len(first["SECRET_KEY"]) >= 50
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert local_env_ensure(path=path) == [] and local_env_read(path) == first
    # an older file lacking a setting gets just that one; the secret key stays
    path.write_text(f"DEBUG=1\nSECRET_KEY={first['SECRET_KEY']}\n")
    assert local_env_ensure(path=path) == ["TOLLWAY_LOCAL_WORKER", "EMAIL_BACKEND"]
    assert local_env_read(path)["SECRET_KEY"] == first["SECRET_KEY"]


def test_every_command_from_the_checkout_reads_it(tmp_path: Path) -> None:
    # given no file: a command says what to do, in one line, without a traceback
    refused = manage(tmp_path, "check")
    assert refused.returncode == 1
    assert "SECRET_KEY is not set" in refused.stderr and "make run" in refused.stderr
    assert "Traceback" not in refused.stderr

    # when `make run` has written it
    write_local_env(tmp_path)
    written = local_env_read(tmp_path / "local.env")

    # then commands run with its settings: DEBUG, its key, the worker's broker on files, mail to var/mail
    assert manage(tmp_path, "check").returncode == 0
    found = json.loads(probe(tmp_path).stdout)
    assert found["debug"] is True and found["secret"] == written["SECRET_KEY"]
    assert found["eager"] is False and found["broker"].startswith("filesystem://")
    assert found["email"].endswith("filebased.EmailBackend") and found["mail_dir"] == str(tmp_path / "mail")
    # the real environment wins over the file
    assert json.loads(probe(tmp_path, SECRET_KEY="from-the-environment").stdout)["secret"] == "from-the-environment"
    # and with Redis, Redis is the broker, as in production
    assert json.loads(probe(tmp_path, REDIS_URL="redis://127.0.0.1:6379/9").stdout)["broker"].startswith("redis://")


def test_production_never_reads_it(tmp_path: Path) -> None:
    write_local_env(tmp_path)
    # DEBUG off in the environment: the file's secret key does not count
    refused = manage(tmp_path, "check", DEBUG="0")
    assert refused.returncode == 1 and "SECRET_KEY is not set" in refused.stderr
    found = json.loads(probe(tmp_path, DEBUG="0", SECRET_KEY="x" * 50).stdout)
    assert found["debug"] is False and found["eager"] is True and found["email"].endswith("smtp.EmailBackend")


def test_values_are_read_without_regard_to_case_and_a_bad_one_is_named(tmp_path: Path) -> None:
    ok = manage(
        tmp_path, "check", DEBUG="1", LOG_LEVEL="info", LOG_FORMAT="JSON", TOLLWAY_LIMITS_ON_REDIS_ERROR="Closed"
    )
    assert ok.returncode == 0, ok.stderr
    bad = manage(tmp_path, "check", DEBUG="1", LOG_LEVEL="loud")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "LOG_LEVEL='loud' is not one of: DEBUG, INFO, WARNING, ERROR, CRITICAL." in bad.stderr


def test_a_task_sent_from_a_web_process_reaches_the_local_workers_broker(tmp_path: Path) -> None:
    # given `make run`'s settings, and a process that loads Django as gunicorn's workers do
    write_local_env(tmp_path)
    send = "import django; django.setup()\nfrom billing import tasks\ntasks.monthly_reports.delay(period='2026-10')\n"
    env = {"PATH": os.environ["PATH"], "TOLLWAY_VAR_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "config.settings"}
    subprocess.run([sys.executable, "-c", send], cwd=ROOT, env=env, check=True, timeout=60)
    # then the message waits in var/celery/queue/ for the worker (not in Celery's default broker)
    queued = list((tmp_path / "celery" / "queue").iterdir())
    assert len(queued) == 1 and "billing.monthly_reports" in queued[0].read_text()
