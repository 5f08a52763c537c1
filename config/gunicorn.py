"""gunicorn configuration, shared by ``make run``, ``make stack`` and the Docker image.

gunicorn's gevent worker monkey-patches the process before it loads the app, so this
file must not import the app, httpx or psycopg at module level (docs/architecture.md, "Worker model").
It imports only the standard library and gunicorn's own modules (its gevent worker
imports gevent, unpatched, as gunicorn does in the master for ``worker_class = "gevent"``).
"""

import inspect
import json
import logging
import os
import subprocess
import sys
import time
from typing import Any

import gevent
from gunicorn import util as gunicorn_util  # type: ignore[import-untyped]  # gunicorn ships no type hints
from gunicorn.glogging import Logger  # type: ignore[import-untyped]
from gunicorn.workers.ggevent import GeventWorker  # type: ignore[import-untyped]


def _cpu_count() -> int:
    # The CPUs this process may use: a container's cpuset, not the whole host.
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# Kept-alive connections waiting for their next request, in this worker: greenlet -> its wait.
_idle: dict[Any, Any] = {}


class _KeptAlive:
    """gunicorn's wait for a connection's next request (``gevent.Timeout(keepalive, False)``,
    which ends the connection quietly when it fires), noted in ``_idle`` while it lasts."""

    __slots__ = ("greenlet", "timeout")

    def __init__(self, seconds: float) -> None:
        self.timeout = gevent.Timeout(seconds, False)
        self.greenlet: Any = None

    def __enter__(self) -> Any:
        self.greenlet = gevent.getcurrent()
        _idle[self.greenlet] = self.timeout
        return self.timeout.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        _idle.pop(self.greenlet, None)
        return self.timeout.__exit__(*exc)


def _end_wait(greenlet: Any, timeout: Any) -> None:
    if _idle.get(greenlet) is timeout:  # still waiting (not since handed a request)
        greenlet.throw(timeout)  # as if the keepalive timeout fired: the connection closes


class Worker(GeventWorker):
    """gunicorn's gevent worker, whose stop does not wait on idle connections.

    Once a worker stops (SIGTERM, or ``max_requests`` recycling it), gunicorn closes its
    listener and waits until no connection is open, and a kept-alive connection waiting
    for its next request counts: a client that holds one idle (an SDK's pool, nginx's
    upstream ``keepalive``) kept the worker up to ``keepalive`` seconds (75) after its
    last call ended, and a recycled worker's replacement was not started meanwhile. Once
    it stops, those waits end as gunicorn's own keepalive timeout ends them, without a
    byte; calls in flight go on, and gunicorn closes their connections after them. With a
    gunicorn that no longer waits through ``timeout_ctx``, this changes nothing.
    """

    def timeout_ctx(self) -> _KeptAlive:
        return _KeptAlive(self.cfg.keepalive)

    def notify(self) -> None:
        # The heartbeat, once a second, in the stop's wait too: end the idle waits then.
        super().notify()
        if not self.alive:
            loop = gevent.get_hub().loop
            for greenlet, timeout in list(_idle.items()):
                loop.run_callback(_end_wait, greenlet, timeout)


bind = os.environ.get("GUNICORN_BIND") or f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
worker_class = Worker
# One gevent worker per CPU: each already serves worker_connections requests at once, so
# the sync-worker rule of thumb (2 x CPUs + 1) would only add memory.
workers = int(os.environ.get("WEB_CONCURRENCY") or _cpu_count())
# Concurrent connections (greenlets) per worker: an LLM call holds one for seconds.
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))
# gevent workers heartbeat from their own loop; a long stream does not trip this.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
# Streams can last minutes: give them time to finish on a graceful restart. Docker's
# stop_grace_period (docker/compose.yaml) and Kubernetes' terminationGracePeriodSeconds
# (deploy/k8s) are a little longer than this.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "120"))
# After SIGTERM, how long a worker keeps its listener open answering /ready with 503 and
# refusing new calls with a retryable 503, before it stops accepting (config/lifecycle.py).
# Part of graceful_timeout. 0 closes the listener at once, which nginx in front of several
# replicas prefers: a refused connection is retried elsewhere, a 503 is not.
drain_seconds = float(os.environ.get("GUNICORN_DRAIN_SECONDS", "0"))
# Longer than nginx's upstream keepalive_timeout (60 s), so nginx closes idle
# connections first and never reuses one gunicorn is closing.
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "75"))
# Recycle workers now and then (a slow leak stays bounded); the jitter keeps the workers
# of a replica from restarting all at once. A worker serves hundreds of calls a second,
# and each restart costs a boot and cold caches, so not more than every few minutes.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "100000"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "10000"))
wsgi_app = "config.wsgi:application"
_MANAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "manage.py")
# What gunicorn reads before the app sees a request: the request line, the number of
# headers and each header's size. Beyond them it answers 414 or 431 itself (in JSON:
# json_write_error below). nginx in front has lower limits of its own, so it answers first.
limit_request_line = int(os.environ.get("GUNICORN_LIMIT_REQUEST_LINE", "8190"))
limit_request_fields = int(os.environ.get("GUNICORN_LIMIT_REQUEST_FIELDS", "100"))
limit_request_field_size = int(os.environ.get("GUNICORN_LIMIT_REQUEST_FIELD_SIZE", "8190"))

# gunicorn's control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl),
# which several masters on one machine (the replicas of `make stack`) would fight over.
# Off unless a path is given.
control_socket_path = os.environ.get("GUNICORN_CONTROL_SOCKET", "")
if control_socket_path:
    control_socket = control_socket_path
else:
    control_socket_disable = True


class JsonAccessLogger(Logger):
    """Access log lines as JSON objects, keyed by the request id nginx and the ledger use.

    ``json.dumps`` escapes whatever a client puts in a path or a user agent, which
    ``access_log_format`` cannot do.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        # Imported here: docker/stack.py loads this file without the project on sys.path.
        from config.env import env
        from config.logs import DEFAULT_FLUSH_SECONDS, BatchedStreamHandler

        # A line per call written at once is a write in the worker and a wakeup of whatever
        # reads stdout: batch it as the request log is (config/logs.py). gunicorn marks
        # its handler ``_gunicorn`` to replace it on a reload; a shape it no longer has
        # leaves gunicorn's own handler in place.
        for index, handler in enumerate(self.access_log.handlers):
            if type(handler) is logging.StreamHandler and getattr(handler, "_gunicorn", False):
                flush_seconds = env.float("TOLLWAY_LOG_FLUSH_SECONDS", DEFAULT_FLUSH_SECONDS)  # as settings.LOGGING
                batched = BatchedStreamHandler(handler.stream, flush_seconds=flush_seconds)
                batched.setFormatter(handler.formatter)
                batched._gunicorn = True  # type: ignore[attr-defined]
                self.access_log.handlers[index] = batched

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        headers = {str(k).lower(): v for k, v in (resp.headers or [])}
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "request_id": headers.get("x-request-id"),
            "remote_addr": environ.get("REMOTE_ADDR"),
            "x_forwarded_for": environ.get("HTTP_X_FORWARDED_FOR"),
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "status": int(status),
            "bytes": getattr(resp, "sent", None),
            "duration_ms": round(request_time.total_seconds() * 1000, 1),
            "user_agent": environ.get("HTTP_USER_AGENT"),
            "pid": os.getpid(),
        }
        try:
            self.access_log.info(json.dumps(line))
        except Exception:
            self.exception("could not write the access log line")


logger_class = JsonAccessLogger
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()

# Prometheus: each worker writes its metrics to files in this directory and /metrics merges
# them (prometheus-client's multiprocess mode). One directory per replica, emptied at start.
_port = bind.rsplit(":", 1)[-1]
_metrics_dir = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR",
    os.path.join(os.environ.get("TOLLWAY_VAR_DIR", os.path.join(os.getcwd(), "var")), "prometheus", _port),
)


# The errors gunicorn answers before the app runs (a request line or header over the
# limits above, a malformed request), in OpenAI's shape: its own are HTML pages.
_ERROR_CODES = {
    400: ("invalid_request_error", "bad_request"),
    403: ("permission_error", "forbidden"),
    414: ("invalid_request_error", "uri_too_long"),
    417: ("invalid_request_error", "expectation_failed"),
    431: ("invalid_request_error", "request_header_fields_too_large"),
    501: ("invalid_request_error", "not_implemented"),
}


def json_write_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """``gunicorn.util.write_error``, answering JSON in OpenAI's error shape."""
    kind, code = _ERROR_CODES.get(status_int, ("server_error", "server_error"))
    body = json.dumps(
        {"error": {"message": f"{reason}: {mesg[:200]}" if mesg else reason, "type": kind, "param": None, "code": code}}
    ).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")
    gunicorn_util.write_nonblock(sock, head + body)


def install_json_errors(log: Any) -> bool:
    """Make gunicorn's own error answers JSON, if its ``write_error`` still has the shape
    this replaces (a private helper of gunicorn's): otherwise warn, and they stay HTML."""
    try:
        expected = list(inspect.signature(gunicorn_util.write_error).parameters) == [
            "sock",
            "status_int",
            "reason",
            "mesg",
        ] and callable(getattr(gunicorn_util, "write_nonblock", None))
    except (TypeError, ValueError):
        expected = False
    if not expected:
        log.warning("gunicorn.util.write_error has changed; gunicorn's own error pages stay HTML")
        return False
    gunicorn_util.write_error = json_write_error
    return True


def on_starting(server: Any) -> None:
    install_json_errors(server.log)
    os.makedirs(_metrics_dir, exist_ok=True)
    for name in os.listdir(_metrics_dir):
        if name.endswith(".db"):
            os.remove(os.path.join(_metrics_dir, name))


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess  # the master never loads the app; this is safe

    multiprocess.mark_process_dead(worker.pid)
    reap(server, worker.pid)


def reap(server: Any, pid: int) -> None:
    """Bill a dead worker's calls now (``manage.py reapworker``): its spooled rows, then its
    reservations still held. In a child process: the master must not load the app (it
    would then fork workers from an app imported before gevent patched anything). A
    worker that exited cleanly has nothing left, and the command says so."""
    if os.environ.get("TOLLWAY_REAP_WORKERS", "1") == "0":
        return
    if not getattr(server, "LISTENERS", None):
        # The arbiter is stopping (it closed its listeners first): its workers drain their
        # calls; any cut at the end of the grace period are the sweeper's, or reapworker's.
        return
    try:
        subprocess.Popen(  # noqa: S603  # our own manage.py, and a pid
            [sys.executable, _MANAGE, "reapworker", "--pid", str(pid)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a signal to the master's group does not reach it
        )
    except OSError as exc:
        server.log.error("could not start the reaper of worker %s: %r", pid, exc)


def post_worker_init(worker: Any) -> None:
    # After gevent has patched the worker and the app is loaded (config/greenio.py).
    import gc

    from billing import spool
    from config import greenio, lifecycle, onewrite

    greenio.install()
    onewrite.install()  # a response's head and first body bytes in one send (config/onewrite.py)
    # gunicorn has installed its SIGTERM handler by now (Worker.init_signals).
    lifecycle.sigterm_handler_install(drain_seconds=drain_seconds)
    # This worker's ledger spool, and a replay of what earlier workers left (billing/spool.py).
    spool.start()
    # Everything loaded so far lives as long as the worker: out of the collector's way,
    # so each collection walks only what requests allocate.
    gc.freeze()
