"""The fault suite's machinery: private Redis and Postgres processes, two gunicorn replicas
in front of a counting mock upstream, load from two client processes, and the faults.

Everything runs on loopback, on free ports, under one temporary directory, and every
process is started and stopped here by its pid: the shared Postgres and Redis of the
other tests are never touched. Postgres refuses to run as root, so when the suite runs
as root its cluster runs as the ``postgres`` user.

A stack is built in three steps (``tests/faults/conftest.py`` does it):

* ``Postgres.start()`` once per session; ``Postgres.template()`` migrates and seeds one
  database (``tests/faults/seed.py``) that every test copies (``CREATE DATABASE … TEMPLATE``);
* ``FaultStack`` per test: a fresh database, a fresh ``redis-server``, the mock upstream,
  and the replicas (production profile, gevent, 2 + 1 workers by default);
* ``FaultStack.load(...)`` starts the client processes (``tests/faults/load.py``) and
  ``LoadRun.results()`` collects what every request got.

Faults: ``redis.pause()`` / ``redis.resume()`` (SIGSTOP / SIGCONT: a hung Redis),
``redis.restart(empty=True)`` (a restart without persistence), ``postgres.stop()`` /
``postgres.start()`` / ``postgres.restart()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path(os.environ.get("TOLLWAY_FAULTS_PG_BIN", "/usr/lib/postgresql/15/bin"))
UPSTREAM_KEY_ENV = "TOLLWAY_TEST_UPSTREAM_KEY"
UPSTREAM_KEY = "sk-faults-upstream-secret"
TEMPLATE_DB = "tollway_faults_template"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1.0)
    except httpx.HTTPError:
        return False
    return True


def _stop(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Stop one process we started, by its pid: ``sig``, then SIGKILL after ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _as_postgres_user() -> dict[str, Any]:
    """Popen arguments that drop root to the ``postgres`` user (initdb and postgres refuse root)."""
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam("postgres")

    def demote() -> None:
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    return {"preexec_fn": demote}


def _give_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(path, user.pw_uid, user.pw_gid)


# --- Postgres -----------------------------------------------------------------------------


class Postgres:
    """A private Postgres cluster in a temporary directory, run in the foreground by pid."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "pg"
        self.dir.mkdir(parents=True)
        self.dir.chmod(0o755)
        _give_to_postgres(self.dir)
        self.data = self.dir / "data"
        self.port = free_port()
        self.log = self.dir / "postgres.log"
        self.proc: subprocess.Popen[Any] | None = None
        self._initdb()

    def _initdb(self) -> None:
        subprocess.run(
            [str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True,
            stdout=subprocess.DEVNULL,
            **_as_postgres_user(),
        )

    def url(self, dbname: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        """Start (or start again after ``stop``) and wait until it accepts connections."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            [
                str(PG_BIN / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.dir}",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=32MB",
                # Durability is not under test here, and fsync is slow on a shared machine.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            stdout=log,
            stderr=log,
            **_as_postgres_user(),
        )
        log.close()
        wait_until(self.accepts, 30, f"postgres on port {self.port}", every=0.1)

    def accepts(self) -> bool:
        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=1):
                return True
        except psycopg.Error:
            return False

    def stop(self, mode: str = "fast") -> None:
        """``fast`` (SIGINT: disconnect everyone, clean shutdown) or ``immediate`` (SIGQUIT: a crash)."""
        _stop(self.proc, signal.SIGINT if mode == "fast" else signal.SIGQUIT, timeout=30)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def execute(self, dbname: str, sql: Any, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            cursor = conn.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description else []

    def template(self) -> dict[str, Any]:
        """Migrate and seed the template database once; returns the seed (keys and ids)."""
        self.execute("postgres", f"CREATE DATABASE {TEMPLATE_DB}")
        env = django_env(self.url(TEMPLATE_DB), "")
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
        out = subprocess.run(
            [sys.executable, "-m", "tests.faults.seed"], cwd=ROOT, env=env, check=True, capture_output=True, text=True
        ).stdout
        return dict(json.loads(out.strip().splitlines()[-1]))

    def copy_template(self, dbname: str) -> str:
        self.execute("postgres", f"CREATE DATABASE {dbname} TEMPLATE {TEMPLATE_DB}")
        return self.url(dbname)

    def drop(self, dbname: str) -> None:
        with contextlib.suppress(psycopg.Error):
            self.execute("postgres", f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")

    def close(self) -> None:
        self.stop("immediate")


# --- Redis --------------------------------------------------------------------------------


class RedisServer:
    """A private ``redis-server`` without persistence: a restart starts empty."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[Any] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--protected-mode",
                "no",
            ],
            stdout=log,
            stderr=log,
        )
        log.close()
        wait_until(self.answers, 10, f"redis on port {self.port}")

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def pause(self) -> None:
        """SIGSTOP: the server hangs. Connections are still accepted by the kernel; nothing answers."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def restart(self, *, down_seconds: float = 0.0) -> None:
        """Kill it (SIGKILL, no save) and start it again on the same port: it comes back empty."""
        _stop(self.proc, signal.SIGKILL)
        time.sleep(down_seconds)
        self.start()

    def close(self) -> None:
        _stop(self.proc, signal.SIGKILL)


# --- the mock upstream and the replicas -----------------------------------------------------


class MockUpstream:
    """``python -m tests.mockupstream`` on loopback; ``stats()`` counts every call it got."""

    def __init__(self, base: Path, *, latency_ms: int = 0, chunk_delay_ms: int = 0) -> None:
        self.port = free_port()
        log = (base / f"upstream-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.mockupstream",
                "--port",
                str(self.port),
                "--api-key",
                UPSTREAM_KEY,
                "--latency-ms",
                str(latency_ms),
                "--chunk-delay-ms",
                str(chunk_delay_ms),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=log,
        )
        log.close()
        wait_until(lambda: _answers(f"http://127.0.0.1:{self.port}/health"), 90, "the mock upstream")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"http://127.0.0.1:{self.port}/_debug/stats", timeout=10).json())

    def close(self) -> None:
        _stop(self.proc)


def django_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The production profile's environment, built from nothing (the test run's own
    settings must not leak into the servers)."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": database_url,
        "SECRET_KEY": "faults-test-secret",
        "DEBUG": "0",
        "ALLOWED_HOSTS": "127.0.0.1",
        "TOLLWAY_REQUEST_LOG": "0",
        "LOG_LEVEL": "WARNING",
        UPSTREAM_KEY_ENV: UPSTREAM_KEY,
    }
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


class Replica:
    """One gunicorn replica (gevent) of the production profile."""

    def __init__(self, base: Path, name: str, env: dict[str, str], workers: int) -> None:
        self.name = name
        self.port = free_port()
        self.dir = base / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "gunicorn.log"
        self.env = {
            **env,
            "PORT": str(self.port),
            "WEB_CONCURRENCY": str(workers),
            "GUNICORN_ACCESSLOG": "",
            "GUNICORN_GRACEFUL_TIMEOUT": "5",
            "TOLLWAY_VAR_DIR": str(self.dir / "var"),
        }
        self.proc: subprocess.Popen[Any] | None = None
        self.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.py"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=log,
        )
        log.close()

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: see {self.log}")
            return _answers(f"{self.base_url}/health")

        wait_until(up, 60, f"replica {self.name}", every=0.1)

    def close(self) -> None:
        _stop(self.proc)


# --- load ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """What one request got, as ``tests/faults/load.py`` classified it."""

    client: str
    lane: str
    tag: str
    start: float  # wall-clock seconds
    end: float
    status: int  # 0: no HTTP answer at all
    kind: str  # "ok", "stream_error", "error" (OpenAI-shaped), "broken"
    code: str | None
    request_id: str | None
    detail: str = ""

    @property
    def latency(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Lane:
    """One kind of traffic: ``threads`` loops per client process, each sending one request
    after another with this key and body. ``stream_every``: every n-th request streams
    (0: never); ``pause``: seconds between a thread's requests."""

    name: str
    key: str
    threads: int
    body: dict[str, Any]
    stream_every: int = 0
    pause: float = 0.0


@dataclass
class LoadRun:
    """Client processes sending load until ``stop()``."""

    dir: Path
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    @property
    def stop_file(self) -> Path:
        return self.dir / "stop"

    def stop(self, timeout: float = 60.0) -> list[Result]:
        self.stop_file.touch()
        for proc in self.procs:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return self.results()

    def results(self) -> list[Result]:
        found: list[Result] = []
        for path in sorted(self.dir.glob("results-*.jsonl")):
            for line in path.read_text().splitlines():
                if line.strip():
                    found.append(Result(**json.loads(line)))
        return found

    def close(self) -> None:
        self.stop_file.touch()
        for proc in self.procs:
            _stop(proc, timeout=5)


# --- the stack -------------------------------------------------------------------------------


class FaultStack:
    """Per test: a fresh database from the template, a fresh Redis, the mock upstream, the replicas."""

    def __init__(
        self,
        base: Path,
        postgres: Postgres,
        seed: dict[str, Any],
        *,
        name: str,
        workers: Sequence[int] = (2, 1),
        upstream_latency_ms: int = 20,
        upstream_chunk_delay_ms: int = 0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.base = base
        self.postgres = postgres
        self.seed = seed
        self.dbname = f"faults_{name}"[:60]
        self.database_url = postgres.copy_template(self.dbname)
        self.redis = RedisServer(base)
        self.redis.start()
        self.upstream = MockUpstream(base, latency_ms=upstream_latency_ms, chunk_delay_ms=upstream_chunk_delay_ms)
        self.sql("UPDATE proxy_provider SET base_url = %s WHERE name = %s", (self.upstream.base_url, seed["provider"]))
        self.env = django_env(self.database_url, self.redis.url, **(env or {}))
        self.replicas = [Replica(base, f"web-{i + 1}", self.env, n) for i, n in enumerate(workers)]
        self._loads: list[LoadRun] = []

    @property
    def bases(self) -> list[str]:
        return [replica.base_url for replica in self.replicas]

    def sql(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.postgres.execute(self.dbname, query, params)

    def manage(self, *args: str) -> str:
        """Run a management command against this stack, as an operator would."""
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, check=True, capture_output=True, text=True
        ).stdout

    def load(self, lanes: Sequence[Lane], *, clients: int = 2, max_seconds: float = 300.0) -> LoadRun:
        """Start ``clients`` load processes, each running every lane, alternating replicas."""
        run = LoadRun(dir=Path(tempfile.mkdtemp(prefix="load-", dir=self.base)))
        spec = {
            "bases": self.bases,
            "lanes": [lane.__dict__ for lane in lanes],
            "stop_file": str(run.stop_file),
            "max_seconds": max_seconds,
        }
        (run.dir / "spec.json").write_text(json.dumps(spec))
        for i in range(clients):
            out = run.dir / f"results-c{i + 1}.jsonl"
            run.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tests.faults.load", str(run.dir / "spec.json"), f"c{i + 1}", str(out)],
                    cwd=ROOT,
                    stderr=(run.dir / f"client-c{i + 1}.log").open("ab"),
                )
            )
        self._loads.append(run)
        return run

    # --- what the platform recorded ---

    def ledger(self, key_id: int | None = None) -> tuple[int, Decimal]:
        """Ledger rows and their total cost, for one key or all."""
        if key_id is None:
            rows = self.sql("SELECT count(*), coalesce(sum(cost), 0) FROM billing_usagerecord")
        else:
            rows = self.sql(
                "SELECT count(*), coalesce(sum(cost), 0) FROM billing_usagerecord WHERE api_key_id = %s", (key_id,)
            )
        return int(rows[0][0]), Decimal(rows[0][1])

    def ledger_request_ids(self) -> set[str]:
        return {row[0] for row in self.sql("SELECT request_id FROM billing_usagerecord")}

    def settled(self, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
        """Wait until every call the upstream received has its ledger row (or the count
        stops moving); returns (ledger rows, upstream stats)."""
        deadline = time.monotonic() + timeout
        last = (-1, -1)
        while True:
            stats = self.upstream.stats()
            rows, _ = self.ledger()
            if rows == stats["total"] or time.monotonic() > deadline:
                return rows, stats
            if (rows, stats["total"]) == last:
                time.sleep(0.5)
            last = (rows, stats["total"])
            time.sleep(0.2)

    def logs(self) -> str:
        """The replicas' logs, for a failure message."""
        return "\n".join(f"--- {r.name}\n{r.log.read_text()[-6000:]}" for r in self.replicas)

    def close(self) -> None:
        for run in self._loads:
            run.close()
        for replica in self.replicas:
            replica.close()
        self.upstream.close()
        self.redis.close()
        self.postgres.drop(self.dbname)


def make_base_dir() -> Path:
    base = Path(tempfile.mkdtemp(prefix="tollway-faults-"))
    base.chmod(0o755)
    return base


def remove_base_dir(base: Path) -> None:
    shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def phase_clock() -> Iterator[dict[str, float]]:
    """Named wall-clock instants of a test's phases, to slice load results by."""
    marks: dict[str, float] = {"start": time.time()}
    yield marks
    marks["end"] = time.time()
