"""A real PgBouncer in transaction pooling mode, started by the tests on a free port in a
temporary directory, in front of the test Postgres. The shared server is never touched:
PgBouncer only opens ordinary client connections to it.

Debian's pgbouncer (``apt-get install pgbouncer``; ``.ci/run`` installs it). Prepared
statements survive transaction pooling only from PgBouncer 1.21, with
``max_prepared_statements``: older versions run with ``DB_PREPARED_STATEMENTS=0``, the
setting the docs tell operators to use there (:func:`app_env`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from tests.conftest import free_port

PREPARED_STATEMENTS_SINCE = (1, 21)


def binary() -> str | None:
    return shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None)


def version() -> tuple[int, int]:
    """The installed PgBouncer's (major, minor), e.g. (1, 18)."""
    found = binary()
    assert found, "pgbouncer is not installed (apt-get install pgbouncer; .ci/run does it)"
    out = subprocess.run([found, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"PgBouncer (\d+)\.(\d+)", out)
    assert match, out
    return int(match.group(1)), int(match.group(2))


def keeps_prepared_statements() -> bool:
    return version() >= PREPARED_STATEMENTS_SINCE


@dataclass
class PgBouncer:
    proc: subprocess.Popen[Any]
    dir: Path
    port: int
    user: str
    password: str

    def url(self, database: str) -> str:
        return f"postgres://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def app_env(self, database: str) -> dict[str, str]:
        """What the app needs to run through this PgBouncer (docs: PgBouncer)."""
        return {
            "DATABASE_URL": self.url(database),
            "DB_PREPARED_STATEMENTS": "1" if keeps_prepared_statements() else "0",
            "DB_SERVER_SIDE_CURSORS": "0",
        }

    def stats(self) -> dict[str, dict[str, Any]]:
        """``SHOW STATS`` from the admin console, by database."""
        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            dbname="pgbouncer",
            autocommit=True,
        ) as conn:
            # The admin console speaks only the simple query protocol.
            cursor = conn.cursor()
            rows = cursor.execute("SHOW STATS", prepare=False).fetchall()
            names = [c.name for c in cursor.description or ()]
        return {row[0]: dict(zip(names, row, strict=True)) for row in rows}

    def log(self) -> str:
        return (self.dir / "pgbouncer.log").read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def start(*, host: str, port: int, user: str, password: str, pool_size: int = 20, **server: str) -> PgBouncer:
    """PgBouncer on a free loopback port, forwarding every database to ``host:port``.

    ``server`` adds connection parameters for the server connections, e.g.
    ``timezone="America/New_York"`` to play a Postgres whose default is not UTC.
    """
    found = binary()
    assert found, "pgbouncer is not installed (apt-get install pgbouncer; .ci/run does it)"
    directory = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    directory.chmod(0o755)  # PgBouncer drops root for the postgres user, who must read it
    listen = free_port()
    extra = "".join(f" {key}={value}" for key, value in server.items())
    settings = {
        "listen_addr": "127.0.0.1",
        "listen_port": str(listen),
        "unix_socket_dir": "",
        "auth_type": "plain",
        "auth_file": str(directory / "userlist.txt"),
        "admin_users": user,
        "pool_mode": "transaction",
        "default_pool_size": str(pool_size),
        "max_client_conn": "2000",
        "logfile": str(directory / "pgbouncer.log"),
        "pidfile": "",
    }
    if keeps_prepared_statements():
        settings["max_prepared_statements"] = "200"
    lines = ["[databases]", f"* = host={host} port={port}{extra}", "", "[pgbouncer]"]
    lines += [f"{key} = {value}" for key, value in settings.items()]
    (directory / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
    (directory / "userlist.txt").write_text(f'"{user}" "{password}"\n')
    (directory / "pgbouncer.log").touch()
    for path in directory.iterdir():
        path.chmod(0o666 if path.name == "pgbouncer.log" else 0o644)
    # PgBouncer refuses to run as root; as root, it switches to the postgres user.
    command = [found, "--quiet", *(["-u", "postgres"] if os.geteuid() == 0 else []), str(directory / "pgbouncer.ini")]
    with open(directory / "stderr.log", "wb") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    bouncer = PgBouncer(proc=proc, dir=directory, port=listen, user=user, password=password)
    deadline = time.monotonic() + 10
    while True:
        try:
            bouncer.stats()
            return bouncer
        except psycopg.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                errors = (directory / "stderr.log").read_text(errors="replace") + bouncer.log()
                bouncer.stop()
                raise RuntimeError(f"pgbouncer did not start: {errors}") from None
            time.sleep(0.1)
