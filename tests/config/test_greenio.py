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


PATCHED = "from gevent import monkey; monkey.patch_all()\nfrom config import greenio\n"


def run_patched(code: str, *, before_install: str = "") -> subprocess.CompletedProcess[str]:
    """``code`` in a gevent-patched interpreter after ``greenio.install()``, which must
    apply every patch unless ``before_install`` changed a library."""
    install = "applied = greenio.install()\n"
    if not before_install:
        install += "assert applied == ('redis', 'psycopg', 'sendall'), applied\n"
    program = PATCHED + textwrap.dedent(before_install) + install + textwrap.dedent(code)
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result


def postgres_dsn() -> str:
    db = settings.DATABASES["default"]
    return f"host={db['HOST']} port={db['PORT']} user={db['USER']} password={db['PASSWORD']} dbname=postgres"


def test_readiness_checks_tell_idle_data_and_closed_sockets_apart() -> None:
    out = run_patched(
        """
        import socket
        import redis._parsers.hiredis as r
        from proxy.http11 import Connection
        a, b = socket.socketpair()
        idle = Connection(a)
        idle.reusable = True  # as after a response that ended cleanly
        print(not idle.usable(), r._socket_can_read(a, 0))
        b.sendall(b"x")
        print(not idle.usable(), r._socket_can_read(a, 0))
        a.recv(1); b.close()
        print(not idle.usable(), r._socket_can_read(a, 0))
        """
    ).stdout
    assert out.split("\n")[:3] == ["False False", "True True", "True True"]


def test_postgres_waits_let_other_greenlets_run_and_keep_errors() -> None:
    dsn = postgres_dsn()
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
    ).stdout
    took, error, answer = out.split()
    # Three 0.4 s queries at once: together, not one after another (1.2 s).
    assert float(took) < 0.8
    assert error == "AdminShutdown"
    assert answer == "42"


LATE_WAKE = """
    import socket, gevent, redis
    class LateWake:
        # A socket whose first read times out after the answer came: what a greenlet of
        # a worker saturated by a burst sees when the loop wakes it after its timer.
        def __init__(self, sock, answered):
            self.sock, self.first, self.answered = sock, True, answered
        def recv_into(self, *args):
            if self.first:
                self.first = False
                gevent.sleep(0.05)  # meanwhile the answer arrives, if Redis answers
                raise socket.timeout("timed out")
            if not self.answered:
                raise socket.timeout("timed out")
            return self.sock.recv_into(*args)
        def __getattr__(self, name):
            return getattr(self.sock, name)
    conn = redis.Redis.from_url({url!r}, socket_timeout=0.05).connection_pool.get_connection()
    conn._parser._sock = LateWake(conn._parser._sock, {answered!r})
    conn.send_command(*{command!r})
    try:
        print(conn.read_response())
    except redis.exceptions.TimeoutError:
        print("TimeoutError")
    """


def test_an_answer_that_came_in_time_is_read_even_when_a_busy_loop_wakes_its_greenlet_late() -> None:
    code = LATE_WAKE.format(url=settings.REDIS_URL, command=("PING",), answered=True)
    # With the patch: the socket holds the answer, so the wait did not time out
    assert run_patched(code).stdout.strip() == "b'PONG'"
    # Without it (redis-py's own read), the same late wake-up is a timeout: the worker would
    # back off Redis and send a burst of calls to the Postgres fallbacks (issue 24's P2 run)
    plain = subprocess.run(
        [sys.executable, "-c", "from gevent import monkey; monkey.patch_all()\n" + textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.stdout.strip() == "TimeoutError", plain.stderr


def test_a_redis_that_does_not_answer_still_times_out() -> None:
    code = LATE_WAKE.format(url=settings.REDIS_URL, command=("BLPOP", "tw:greenio:nothing", "1"), answered=False)
    assert run_patched(code).stdout.strip() == "TimeoutError"


def test_a_library_release_that_changed_what_a_patch_replaces_keeps_its_own_behaviour() -> None:
    # given releases where redis-py renamed its check, psycopg's wait took other
    # arguments, and gevent's sendall lost its flags
    changed = """
        import sys
        import psycopg.waiting, redis._parsers.hiredis as r
        r._socket_ready = r._socket_can_read
        del r._socket_can_read
        library_wait = psycopg.waiting.wait
        def wait(gen, fd, *, interval=0.0, timeout=None):
            return library_wait(gen, fd, interval, timeout)
        psycopg.waiting.wait = wait
        from gevent import _socket3
        gevent_sendall = _socket3.socket.sendall
        def sendall(self, data):
            return gevent_sendall(self, data)
        _socket3.socket.sendall = sendall
        """
    # when the worker installs the patches, then nothing is patched and the worker still
    # talks to Postgres, concurrently, through psycopg's own wait
    result = run_patched(
        f"""
        print(applied)
        assert psycopg.waiting.wait is wait
        import time, gevent
        conns = [psycopg.connect({postgres_dsn()!r}, autocommit=True) for _ in range(3)]
        started = time.monotonic()
        gevent.joinall([gevent.spawn(c.execute, "SELECT pg_sleep(0.4)") for c in conns], raise_error=True)
        print(round(time.monotonic() - started, 1))
        """,
        before_install=changed,
    )
    applied, took = result.stdout.split("\n")[:2]
    assert applied == "()"
    assert float(took) < 0.8
    # and the log says which patch was skipped, and why
    assert "redis patch skipped" in result.stderr and "_socket_can_read is missing" in result.stderr
    assert "psycopg patch skipped" in result.stderr and "takes (gen, fd, interval, timeout)" in result.stderr
    assert "sendall patch skipped" in result.stderr and "takes (self, data), not (self, data, flags)" in result.stderr


def test_a_send_that_fits_goes_out_at_once_and_a_large_one_whole() -> None:
    out = run_patched(
        """
        import socket, gevent
        from gevent import _socket3
        asked = []
        getsockopt = _socket3.socket.getsockopt
        def counting(self, *args):
            asked.append(args)
            return getsockopt(self, *args)
        _socket3.socket.getsockopt = counting
        a, b = socket.socketpair()
        a.sendall(b"data: one chunk\\n\\n")
        print(b.recv(100) == b"data: one chunk\\n\\n", len(asked))
        payload = bytes(range(256)) * 40_000  # 10 MB: far past the socket's buffer
        reader = gevent.spawn(lambda: b"".join(iter(lambda: b.recv(1 << 20), b"")))
        a.sendall(payload)
        a.close()
        print(reader.get(timeout=20) == payload, len(asked) > 0)
        """
    ).stdout
    # the small send skipped gevent's getsockopt; the large one went out whole, by gevent's path
    assert out.split("\n")[:2] == ["True 0", "True True"]
