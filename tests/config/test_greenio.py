"""config/greenio.py under a real gevent-patched interpreter, as a gunicorn worker has it.

Each check runs in a subprocess: monkey-patching cannot be undone in the test process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]


def run_patched(code: str) -> str:
    prelude = "from gevent import monkey; monkey.patch_all()\nfrom config import greenio\nassert greenio.install()\n"
    result = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_readiness_checks_tell_idle_data_and_closed_sockets_apart() -> None:
    out = run_patched(
        """
        import socket
        import httpcore._backends.sync as h
        import redis._parsers.hiredis as r
        a, b = socket.socketpair()
        print(h.is_socket_readable(a), r._socket_can_read(a, 0))
        b.sendall(b"x")
        print(h.is_socket_readable(a), r._socket_can_read(a, 0))
        a.recv(1); b.close()
        print(h.is_socket_readable(a), r._socket_can_read(a, 0))
        """
    )
    assert out.split("\n")[:3] == ["False False", "True True", "True True"]


def test_postgres_waits_let_other_greenlets_run_and_keep_errors() -> None:
    db = settings.DATABASES["default"]
    dsn = f"host={db['HOST']} port={db['PORT']} user={db['USER']} password={db['PASSWORD']} dbname=postgres"
    out = run_patched(
        f"""
        import time, gevent, psycopg
        conns = [psycopg.connect({dsn!r}, autocommit=True) for _ in range(3)]
        started = time.monotonic()
        gevent.joinall([gevent.spawn(c.execute, "SELECT pg_sleep(0.4)") for c in conns], raise_error=True)
        print(round(time.monotonic() - started, 1))
        try:
            conns[0].execute("SELECT pg_terminate_backend(%s)", [conns[1].info.backend_pid])
            conns[1].execute("SELECT 1")
        except psycopg.OperationalError as exc:
            print(type(exc).__name__)
        print(conns[2].execute("SELECT %s::int + 1", [41]).fetchone()[0])
        """
    )
    took, error, answer = out.split()
    # Three 0.4 s queries at once: together, not one after another (1.2 s).
    assert float(took) < 0.8
    assert error == "AdminShutdown"
    assert answer == "42"
