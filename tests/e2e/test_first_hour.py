"""A newcomer's first hour on a fresh clone, following only the docs, word for word.

A temporary ``git clone`` of this repository (its committed HEAD) gets this checkout's
virtualenv and ``make setup`` (what ``make run`` does before it serves). Then:

* every command in :data:`COMMANDS` runs exactly as written (each is checked to appear, as
  written, in the README or under ``docs/``), ``createsuperuser`` answering its prompts;
* ``make demo`` serves the embedded default (SQLite, no Redis, no broker server) with its
  Celery worker and beat beside gunicorn, and the scheduled work runs: deployment health
  checks, and the admin's Reports "Generate now", which the worker carries out;
* the quick-start SDK call is answered, last month is closed into invoices while it
  serves, and the invoice PDF is downloaded through the API;
* a password reset goes by mail (a file under ``var/mail/``) and works end to end.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pexpect
import pytest

from tests.conftest import ROOT, free_port, wait_for_http

pytestmark = pytest.mark.live

PASSWORD = "tollway-first-hour-7"

# The documented commands this test runs, as the docs write them (keep them in step).
CREATE_SUPERUSER = ".venv/bin/python manage.py createsuperuser"
COMMANDS = [
    ".venv/bin/python manage.py createapikey demo",
    '.venv/bin/python manage.py createtenant acme --name "Acme Corp" --monthly-budget-usd 100',
    ".venv/bin/python manage.py createapikey acme --name production --scopes inference",
    '.venv/bin/python manage.py topup acme 50 --note "first payment"',
    ".venv/bin/python manage.py createapikey demo --name finance --scopes billing",
]
CLOSE_MONTH = ".venv/bin/python manage.py closemonth last --finalize"
SERVE = "make demo"


def docs_text() -> str:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return "\n".join(page.read_text() for page in pages if page.is_file())


def test_every_command_run_here_is_in_the_docs_as_written() -> None:
    text = docs_text()
    missing = [c for c in [CREATE_SUPERUSER, *COMMANDS, CLOSE_MONTH, SERVE, "make run"] if c not in text]
    assert not missing, f"documented commands this test runs are no longer in the docs: {missing}"


def clean_env(**extra: str) -> dict[str, str]:
    """A newcomer's shell: nothing of Tollway's set (not the test settings' DEBUG=0 or URLs)."""
    keep = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "TERM") if name in os.environ}
    return {**keep, **extra}


def sh(clone: Path, command: str, **extra: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", "-c", command], cwd=clone, env=clean_env(**extra), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def clone(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A fresh clone with `make run`'s setup done; its printed demo key kept."""
    if request.config.getoption("--via-pgbouncer"):
        pytest.skip("the embedded default runs on SQLite: it has no Postgres connection to put through PgBouncer")
    path = tmp_path_factory.mktemp("first-hour") / "tollway"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(path)], check=True, timeout=120)
    (path / ".venv").symlink_to(ROOT / ".venv")  # the venv `make` would build, without PyPI
    setup = sh(path, "make setup -o .venv/.installed")
    assert (path / "var" / "local.env").exists()
    keys = re.findall(r"^(tlw_\S+)$", setup.stdout, re.M)
    assert len(keys) == 1, setup.stdout
    yield {"path": path, "demo_key": keys[0]}


@pytest.fixture(scope="module")
def documented(clone: dict[str, Any]) -> dict[str, Any]:
    """Each documented command, run as written in the clone, with what it printed."""
    path = clone["path"]
    # createsuperuser asks for a user name, an e-mail (where resets go) and a password
    child = pexpect.spawn(
        "bash", ["-c", CREATE_SUPERUSER], cwd=str(path), env=clean_env(), encoding="utf-8", timeout=120
    )
    child.expect("Username")
    child.sendline("admin")
    child.expect("Email address:")
    child.sendline("admin@example.com")
    for _ in range(2):
        child.expect("Password")
        child.sendline(PASSWORD)
    child.expect("Superuser created successfully.")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    return {**clone, "outputs": {command: sh(path, command).stdout for command in COMMANDS}}


def test_the_documented_commands_work_as_written(documented: dict[str, Any]) -> None:
    outputs = documented["outputs"]
    for command in (COMMANDS[0], COMMANDS[2], COMMANDS[4]):  # the secret is the last line printed
        assert re.search(r"^tlw_\S+$", outputs[command].splitlines()[-1]), outputs[command]
    assert "Recorded topup of $50 for acme. Balance: $50" in outputs[COMMANDS[3]]


@pytest.fixture(scope="module")
def served(documented: dict[str, Any]) -> Iterator[str]:
    """`make demo` on a free port, as the docs run it; stopped (Ctrl-C's way) afterwards."""
    path, port = documented["path"], free_port()
    # Health checks every 2 s rather than every minute, so the test sees beat's work soon.
    env = clean_env(TOLLWAY_HEALTH_CHECK_SECONDS="2")
    log = (path / "var" / "make-demo.log").open("w")
    proc = subprocess.Popen(
        ["bash", "-c", f"{SERVE} -o .venv/.installed PORT={port}"],
        cwd=path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/health", timeout=180, proc=proc)
        yield base
    finally:
        pidfile = path / "var" / "supervisord.pid"
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGINT)  # what Ctrl-C does
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def query(clone: dict[str, Any], sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(clone["path"] / "var" / "tollway.sqlite3", timeout=20) as db:
        return db.execute(sql, params).fetchall()


def eventually(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def form_post(client: httpx.Client, page: str, data: dict[str, str], url: str | None = None) -> httpx.Response:
    """Fill a Django form as a browser would: its CSRF token from the page, then POST."""
    html = client.get(page).text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert token is not None, html[:500]
    return client.post(url or page, data={"csrfmiddlewaretoken": token.group(1), **data})


def test_make_demo_runs_the_whole_product(documented: dict[str, Any], served: str) -> None:
    clone = documented
    # the quick start: the official SDK, with the key `make run` printed
    client = openai.OpenAI(base_url=f"{served}/v1", api_key=clone["demo_key"], max_retries=0)
    reply = client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "Hi"}])
    assert reply.choices[0].message.content and reply.model_dump()["usage"]["cost"]

    # beat and the worker run beside gunicorn: every deployment gets its health checked
    deployments = query(clone, "SELECT count(*) FROM proxy_deployment WHERE is_active")[0][0]
    eventually(
        "the beat's health checks",
        lambda: query(clone, "SELECT count(*) FROM proxy_deploymenthealth")[0][0] == deployments,
    )

    # the history make demo seeded: two months invoiced; last month closed now, while it serves
    last = (datetime.now(UTC).replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
    closed = sh(clone["path"], CLOSE_MONTH).stdout
    assert f"demo: {last} TW-" in closed and "(open)" in closed
    # and its invoice comes down as a PDF through the API
    finance_key = clone["outputs"][COMMANDS[4]].splitlines()[-1]
    with httpx.Client(base_url=served, headers={"Authorization": f"Bearer {finance_key}"}) as api:
        invoices = api.get("/v1/invoices", params={"period": last}).json()["data"]
        assert len(invoices) == 1
        pdf = api.get(f"/v1/invoices/{invoices[0]['number']}.pdf")
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")

    # finance asks for last month's reports now: gunicorn queues the task, the worker runs it
    with httpx.Client(base_url=served, follow_redirects=True, timeout=30) as browser:
        logged_in = form_post(
            browser, "/admin/login/?next=/admin/", {"username": "admin", "password": PASSWORD, "next": "/admin/"}
        )
        assert logged_in.url.path == "/admin/", logged_in.text[:300]
        done = form_post(browser, "/admin/billing/report/", {"period": last}, url="/admin/billing/report/generate/")
        assert f"The reports for {last} are being generated" in done.text
    eventually(
        "the worker's reports",
        lambda: query(clone, "SELECT count(*) FROM billing_report WHERE period = ? AND kind = 'margin'", last)[0][0],
    )


def test_a_password_reset_by_mail_works_end_to_end(documented: dict[str, Any], served: str) -> None:
    clone = documented
    mail = clone["path"] / "var" / "mail"
    with httpx.Client(base_url=served, follow_redirects=True, timeout=30) as browser:
        sent = form_post(browser, "/accounts/password_reset/", {"email": "admin@example.com"})
        assert sent.url.path == "/accounts/password_reset/done/"
        # the mail is a file under var/mail/, with the one-time link in it
        message = eventually("the reset mail", lambda: sorted(mail.glob("*.log")))[-1].read_text()
        assert "To: admin@example.com" in message
        link = re.search(r"http://\S+/accounts/reset/\S+/", message)
        assert link is not None, message
        form = browser.get(link.group(0))
        assert "set-password" in str(form.url)
        new = "a-new-first-hour-password-9"
        changed = form_post(browser, str(form.url), {"new_password1": new, "new_password2": new})
        assert changed.url.path == "/accounts/reset/done/"
        # the new password logs in; the old one no longer does
        browser.cookies.clear()
        old = form_post(browser, "/admin/login/", {"username": "admin", "password": PASSWORD, "next": "/admin/"})
        assert old.url.path == "/admin/login/"
        browser.cookies.clear()
        ok = form_post(browser, "/admin/login/", {"username": "admin", "password": new, "next": "/admin/"})
        assert ok.url.path == "/admin/"
