"""The production stack on one machine, without Docker: ``make stack`` / ``make stack-down``.

    python docker/stack.py up [--replicas N] | down | status [--json] | reload

``up`` runs the one-shot steps first (the development certificate, the database if it is
missing, the migrations once, ``collectstatic``, ``seeddemo``), checks that nginx is
installed and that every port is free, and only then starts, on loopback, under one
**supervisord** (``supervisor`` from PyPI, a daemon of its own):

* N gunicorn replicas (``config/gunicorn.py``, gevent workers), one port each;
* a Celery worker and exactly one Celery beat;
* nginx, the OS package, rendered from ``nginx/nginx.conf.template`` with its own prefix,
  pid, temp and log paths under the state directory, so it never touches a system nginx.
  Its master is started by this user (root here); workers drop to ``www-data`` (or stay
  this user where ``www-data`` could not reach the files: see ``nginx_user``).

supervisord's configuration is written to the state directory (``supervisord.conf``), each
program logs to ``logs/<name>.log``, and ``up`` waits until every replica, nginx and the
worker answer. If anything fails on the way, ``up`` shuts supervisord down, which stops
every process it had started, and exits non-zero. A process that dies is not restarted
(tests kill replicas on purpose). ``down`` stops nginx first (no new requests), then beat,
the worker and the replicas: SIGTERM to each process group, SIGKILL after the stop
timeout. ``reload`` re-renders nginx's configuration from the current environment (same
ports) and reloads it gracefully. The end-to-end tests drive this file.

Environment (defaults in brackets):
    TOLLWAY_STACK_DIR [var/stack]           state: supervisord.conf, logs/, nginx/, static/
    TOLLWAY_STACK_HTTP_PORT [8080]          http://127.0.0.1:PORT redirects to HTTPS
    TOLLWAY_STACK_HTTPS_PORT [8443]
    TOLLWAY_STACK_WEB_PORTS [8101,8102]     one gunicorn replica per port; with --replicas N
                                            and no list, 8101 to 8100+N
    TOLLWAY_STACK_CERT_DIR [nginx/dev-certs]
    TOLLWAY_STACK_SEED [1]                  run ``seeddemo`` (prints the demo key once)
    TOLLWAY_STACK_CELERY_CONCURRENCY [2]
    TOLLWAY_STACK_STOP_TIMEOUT [30]         seconds between SIGTERM and SIGKILL on stop
    TOLLWAY_STACK_NGINX_USER [www-data]     the user nginx's workers run as
    TOLLWAY_STACK_NGINX [nginx on PATH, or /usr/sbin/nginx]  the nginx binary
    DATABASE_URL [postgres://postgres:postgres@127.0.0.1:5432/tollway]  created if missing
    REDIS_URL [redis://127.0.0.1:6379/0]
    TOLLWAY_NGINX_RATE [50r/s], TOLLWAY_NGINX_BURST [100], TOLLWAY_NGINX_CONN_LIMIT [200],
    TOLLWAY_NGINX_STREAM_TIMEOUT [300s], TOLLWAY_MAX_BODY_BYTES [10485760]
    WEB_CONCURRENCY [cores / replicas, at least 1]  gunicorn workers per replica
Anything else in the environment (provider keys...) reaches the app.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import secrets
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

# The outer nginx shield and timeouts: the same defaults as docker/.env.example.
NGINX_TUNABLES = {
    "TOLLWAY_NGINX_RATE": "50r/s",
    "TOLLWAY_NGINX_BURST": "100",
    "TOLLWAY_NGINX_CONN_LIMIT": "200",
    "TOLLWAY_NGINX_STREAM_TIMEOUT": "300s",
    "TOLLWAY_MAX_BODY_BYTES": str(10 * 1024 * 1024),
}


def _load_render() -> Any:
    return _load_file("tollway_nginx_render", ROOT / "nginx" / "render.py")


def _load_file(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def find_nginx() -> str | None:
    """nginx lives in /usr/sbin, which a non-root PATH may lack; TOLLWAY_STACK_NGINX names
    another binary."""
    if os.environ.get("TOLLWAY_STACK_NGINX"):
        chosen = os.environ["TOLLWAY_STACK_NGINX"]
        return chosen if os.access(chosen, os.X_OK) else None
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


@dataclass
class Config:
    state_dir: Path
    http_port: int
    https_port: int
    web_ports: list[int]
    cert_dir: Path
    seed: bool
    celery_concurrency: int
    stop_timeout: int
    database_url: str
    redis_url: str

    @classmethod
    def from_env(cls, env: dict[str, str], replicas: int | None = None) -> Config:
        """The stack's settings. ``replicas`` (``make stack REPLICAS=N``) sets how many
        gunicorn replicas run, on 8101 upwards unless TOLLWAY_STACK_WEB_PORTS lists them."""

        def path(name: str, default: Path) -> Path:
            value = env.get(name)
            return (ROOT / value).resolve() if value else default

        listed = [int(p) for p in (env.get("TOLLWAY_STACK_WEB_PORTS") or "").split(",") if p.strip()]
        if listed and replicas is not None and len(listed) != replicas:
            raise SystemExit(f"stack: --replicas {replicas}, but TOLLWAY_STACK_WEB_PORTS lists {len(listed)} ports")
        if replicas is not None and replicas < 1:
            raise SystemExit("stack: --replicas must be at least 1")
        web_ports = listed or [8101 + index for index in range(replicas or 2)]
        return cls(
            state_dir=path("TOLLWAY_STACK_DIR", ROOT / "var" / "stack"),
            http_port=int(env.get("TOLLWAY_STACK_HTTP_PORT") or 8080),
            https_port=int(env.get("TOLLWAY_STACK_HTTPS_PORT") or 8443),
            web_ports=web_ports,
            cert_dir=path("TOLLWAY_STACK_CERT_DIR", ROOT / "nginx" / "dev-certs"),
            seed=(env.get("TOLLWAY_STACK_SEED") or "1") not in ("0", "false", "no"),
            celery_concurrency=int(env.get("TOLLWAY_STACK_CELERY_CONCURRENCY") or 2),
            stop_timeout=int(env.get("TOLLWAY_STACK_STOP_TIMEOUT") or 30),
            database_url=env.get("DATABASE_URL") or "postgres://postgres:postgres@127.0.0.1:5432/tollway",
            redis_url=env.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
        )

    @property
    def supervisor_conf(self) -> Path:
        return self.state_dir / "supervisord.conf"

    @property
    def supervisor_socket(self) -> Path:
        return self.state_dir / "supervisor.sock"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def nginx_dir(self) -> Path:
        return self.state_dir / "nginx"

    @property
    def nginx_conf(self) -> Path:
        return self.nginx_dir / "nginx.conf"

    @property
    def static_root(self) -> Path:
        return self.state_dir / "static"

    @property
    def worker_name(self) -> str:
        return f"tollway-stack-{self.https_port}@{socket.gethostname()}"

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"


def app_env(cfg: Config, env: dict[str, str]) -> dict[str, str]:
    """The app's environment: production settings behind nginx, on the local services."""
    secret_file = cfg.state_dir / "secret_key"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(50))
        secret_file.chmod(0o600)
    origins = [f"https://{host}:{cfg.https_port}" for host in ("127.0.0.1", "localhost")]
    return {
        **env,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        # Production settings: DEBUG off also keeps a checkout's var/local.env out of it.
        "DEBUG": "0",
        "SECRET_KEY": env.get("SECRET_KEY") or secret_file.read_text().strip(),
        "ALLOWED_HOSTS": env.get("ALLOWED_HOSTS") or "127.0.0.1,localhost",
        "CSRF_TRUSTED_ORIGINS": env.get("CSRF_TRUSTED_ORIGINS") or ",".join(origins),
        "DATABASE_URL": cfg.database_url,
        "REDIS_URL": cfg.redis_url,
        "STATIC_ROOT": str(cfg.static_root),
        # nginx always overwrites X-Request-ID with its own unique id.
        "TOLLWAY_TRUST_REQUEST_ID": "1",
        "HOST": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
    }


def nginx_user(cfg: Config, env: dict[str, str]) -> str:
    """nginx's workers drop to www-data, which must reach the static files. Where the state
    directory sits under a private directory (a CI checkout in a 0700 folder, say), they run
    as this user instead: it is a loopback stack, not a server."""
    if env.get("TOLLWAY_STACK_NGINX_USER"):
        return env["TOLLWAY_STACK_NGINX_USER"]
    path = cfg.state_dir
    while path != path.parent:
        path = path.parent
        if not path.stat().st_mode & 0o001:
            import pwd

            return pwd.getpwuid(os.getuid()).pw_name
    return "www-data"


def nginx_values(cfg: Config, env: dict[str, str]) -> dict[str, str]:
    servers = "\n        ".join(f"server 127.0.0.1:{port} max_fails=3 fail_timeout=10s;" for port in cfg.web_ports)
    values = {name: env.get(name) or default for name, default in NGINX_TUNABLES.items()}
    values.update(
        TOLLWAY_NGINX_USER=nginx_user(cfg, env),
        TOLLWAY_NGINX_PID=str(cfg.nginx_dir / "nginx.pid"),
        TOLLWAY_NGINX_TEMP_DIR=str(cfg.nginx_dir / "temp"),
        TOLLWAY_NGINX_ACCESS_LOG=str(cfg.logs / "nginx-access.log"),
        TOLLWAY_NGINX_RESOLVER="",
        TOLLWAY_NGINX_HTTP_LISTEN=f"127.0.0.1:{cfg.http_port}",
        TOLLWAY_NGINX_HTTPS_LISTEN=f"127.0.0.1:{cfg.https_port}",
        TOLLWAY_NGINX_HTTPS_PORT=str(cfg.https_port),
        TOLLWAY_NGINX_SERVER_NAME="127.0.0.1 localhost",
        TOLLWAY_NGINX_UPSTREAM_SERVERS=servers,
        TOLLWAY_NGINX_TLS_CERT=str(cfg.cert_dir / "cert.pem"),
        TOLLWAY_NGINX_TLS_KEY=str(cfg.cert_dir / "key.pem"),
        TOLLWAY_NGINX_STATIC_ROOT=str(cfg.static_root),
        TOLLWAY_NGINX_ACME_ROOT=str(cfg.state_dir / "acme"),
    )
    return values


def nginx_cmd(cfg: Config, *args: str) -> list[str]:
    nginx = find_nginx()
    if nginx is None:
        raise StackError("nginx is not installed (apt-get install nginx); nothing was started")
    # -e: log startup errors to stderr, not to the system nginx's /var/log/nginx/error.log.
    return [nginx, "-p", f"{cfg.nginx_dir}/", "-c", str(cfg.nginx_conf), "-e", "stderr", *args]


def write_nginx_conf(cfg: Config, env: dict[str, str]) -> None:
    render = _load_render()
    cfg.nginx_conf.write_text(render.render(render.TEMPLATE.read_text(), nginx_values(cfg, env)))
    result = subprocess.run(nginx_cmd(cfg, "-t", "-q"), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StackError(f"nginx -t failed on {cfg.nginx_conf}:\n{result.stderr}")


class StackError(Exception):
    """A step of ``up`` (or another command) failed; the message says which and why."""


# --- supervisord -------------------------------------------------------------------------


def web_concurrency(env: dict[str, str], replicas: int) -> int:
    """Workers per replica. The replicas here share one machine's cores, so unless
    WEB_CONCURRENCY says otherwise they split them: more gevent workers than cores only
    adds switching (measured: 2 replicas of 2 workers on 2 cores served 500 calls/s
    through nginx, 2 replicas of 1 worker 700)."""
    if env.get("WEB_CONCURRENCY"):
        return int(env["WEB_CONCURRENCY"])
    # The same count gunicorn's config uses for one replica on its own.
    cores = _load_file("tollway_gunicorn_conf", ROOT / "config" / "gunicorn.py")._cpu_count()
    return max(1, int(cores) // replicas)


def programs(cfg: Config, env: dict[str, str]) -> list[tuple[str, list[str], dict[str, str]]]:
    """What supervisord runs: (name, argv, extra environment), in start order. supervisord
    stops them in the reverse order, so nginx, started last, stops first."""
    workers = str(web_concurrency(env, len(cfg.web_ports)))
    found: list[tuple[str, list[str], dict[str, str]]] = [
        (
            f"web-{index}",
            [PY, "-m", "gunicorn", "-c", "config/gunicorn.py", "--bind", f"127.0.0.1:{port}"],
            {"PORT": str(port), "WEB_CONCURRENCY": workers},
        )
        for index, port in enumerate(cfg.web_ports, start=1)
    ]
    celery = [PY, "-m", "celery", "-A", "config"]
    found.append(
        ("worker", [*celery, "worker", "-n", cfg.worker_name, "--concurrency", str(cfg.celery_concurrency)], {})
    )
    # The Batch API's lines, on their own queue and worker, so a large batch never holds up
    # the scheduled work; its own bounds (TOLLWAY_BATCH_*_CONCURRENCY) keep it below live traffic.
    batch_worker = [*celery, "worker", "-n", f"batches-{cfg.worker_name}", "-Q", "batches", "--concurrency", "1"]
    found.append(("batch-worker", batch_worker, {}))
    # The pidfile keeps a second beat off this state directory.
    beat_files = ["--schedule", str(cfg.state_dir / "celerybeat-schedule")]
    beat_files += ["--pidfile", str(cfg.state_dir / "celerybeat.pid")]
    found.append(("beat", [*celery, "beat", *beat_files], {}))
    found.append(("nginx", nginx_cmd(cfg, "-g", "daemon off;"), {}))
    return found


def _ini(value: str) -> str:
    """A value for supervisord's configuration, which expands %(name)s everywhere."""
    return value.replace("%", "%%")


def supervisor_conf(cfg: Config, env: dict[str, str]) -> str:
    """supervisord's configuration for this stack. It runs daemonised, answers
    supervisorctl and XML-RPC on a socket in the state directory, and keeps every
    program's output in ``logs/<name>.log``."""
    lines = [
        "; Written by docker/stack.py up: the processes of `make stack`.",
        "[supervisord]",
        f"logfile={_ini(str(cfg.logs / 'supervisord.log'))}",
        f"pidfile={_ini(str(cfg.state_dir / 'supervisord.pid'))}",
        f"directory={_ini(str(ROOT))}",
        "",
        "[unix_http_server]",
        f"file={_ini(str(cfg.supervisor_socket))}",
        "chmod=0700",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_ini(str(cfg.supervisor_socket))}",
    ]
    found = programs(cfg, env)
    # One group per tier, stopped as a whole: the replicas (and worker and beat) stop side
    # by side rather than one after another.
    groups = {
        "web": [name for name, _, _ in found if name.startswith("web-")],
        "celery": ["worker", "batch-worker", "beat"],
    }
    for priority, (group, members) in enumerate(groups.items(), start=1):
        lines += ["", f"[group:{group}]", f"programs={','.join(members)}", f"priority={priority * 10}"]
    for name, argv, extra in found:
        lines += [
            "",
            f"[program:{name}]",
            f"command={_ini(shlex.join(argv))}",
            f"directory={_ini(str(ROOT))}",
            # nginx starts last and stops first.
            f"priority={999 if name == 'nginx' else 10}",
            # Started once: a process that dies stays down (the failover tests kill replicas),
            # and one that exits within its first second fails `up` at once.
            "autorestart=false",
            "startsecs=1",
            "startretries=0",
            # SIGTERM to the whole process group (gunicorn's master and workers), then SIGKILL.
            "stopsignal=TERM",
            f"stopwaitsecs={cfg.stop_timeout}",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={_ini(str(cfg.logs / f'{name}.log'))}",
            "stdout_logfile_maxbytes=0",
        ]
        if extra:
            pairs = ",".join(f'{key}="{_ini(value)}"' for key, value in extra.items())
            lines.append(f"environment={pairs}")
    return "\n".join(lines) + "\n"


def supervisor(cfg: Config) -> Any:
    """An XML-RPC proxy to the stack's supervisord (``supervisor.xmlrpc`` is the client
    transport supervisor documents for its UNIX socket)."""
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{cfg.supervisor_socket}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor


def processes(cfg: Config) -> list[dict[str, Any]] | None:
    """supervisord's view of each program (name, statename, pid), or None when it is not running."""
    if not cfg.supervisor_socket.exists():
        return None
    try:
        return list(supervisor(cfg).getAllProcessInfo())
    except OSError:  # a socket left by a supervisord that was killed
        return None


def supervisor_shutdown(cfg: Config) -> None:
    """Stop every program (nginx first; SIGKILL after the stop timeout) and supervisord
    itself; return once supervisord has exited."""
    pidfile = cfg.state_dir / "supervisord.pid"
    pid = int(pidfile.read_text()) if pidfile.exists() else None
    with contextlib.suppress(OSError, xmlrpc.client.Fault):
        supervisor(cfg).shutdown()
    # supervisord stops one program at a time, each within the stop timeout.
    deadline = time.monotonic() + cfg.stop_timeout * (len(cfg.web_ports) + 3) + 10
    while pid is not None and _running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# --- readiness -----------------------------------------------------------------------------


def wait_for(what: str, check: Any, timeout: float, cfg: Config) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        failed = [p for p in processes(cfg) or [] if p["statename"] in ("EXITED", "FATAL", "BACKOFF", "STOPPED")]
        if failed:
            names = ", ".join(p["name"] for p in failed)
            raise StackError(f"{names} exited while waiting for {what}; see {cfg.logs}/<name>.log")
        if check():
            return
        time.sleep(0.2)
    raise StackError(f"{what} was not ready within {timeout:.0f}s; logs are in {cfg.logs}")


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310  # our own loopback URL
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def worker_answers(cfg: Config) -> bool:
    from celery import Celery

    app = Celery(broker=cfg.redis_url)
    try:
        return bool(app.control.ping(destination=[cfg.worker_name], timeout=1.0))
    except Exception:  # the broker may not be reachable yet
        return False
    finally:
        app.close()


def ensure_database(url: str) -> None:
    """Create the stack's Postgres database when it does not exist yet."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme.startswith("postgres"):
        return
    import psycopg
    from psycopg import sql

    name = parts.path.lstrip("/")
    admin = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            print(f"stack: created database {name}")


def ports_free(cfg: Config) -> None:
    """Refuse to start when a port is taken, before anything runs."""
    for port in (*cfg.web_ports, cfg.http_port, cfg.https_port):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                raise StackError(
                    f"port {port} is in use (another stack? `make stack-down`); nothing was started"
                ) from None


# --- commands ------------------------------------------------------------------------------


def up(cfg: Config, env: dict[str, str]) -> int:
    running = processes(cfg)
    if running is not None:
        names = ", ".join(p["name"] for p in running if p["statename"] == "RUNNING")
        print(f"stack: already running ({names or 'supervisord'}); `make stack-down` first", file=sys.stderr)
        return 1
    try:
        # Checks and one-shot steps: nothing is left running if one of them fails.
        nginx_cmd(cfg)
        ports_free(cfg)
        for path in (cfg.logs, cfg.nginx_dir / "temp", cfg.static_root, cfg.state_dir / "acme"):
            path.mkdir(parents=True, exist_ok=True)
        # nginx's workers (www-data) read the static files: the tree must be traversable.
        cfg.state_dir.chmod(0o755)
        subprocess.run(["bash", str(ROOT / "nginx" / "dev-cert.sh"), str(cfg.cert_dir)], check=True)
        ensure_database(cfg.database_url)
        appenv = app_env(cfg, env)
        manage = [PY, "manage.py"]
        # Migrations run once, here, before any replica starts; never from each replica.
        subprocess.run([*manage, "migrate", "--noinput"], cwd=ROOT, env=appenv, check=True)
        subprocess.run([*manage, "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, env=appenv, check=True)
        if cfg.seed:
            subprocess.run([*manage, "seeddemo"], cwd=ROOT, env=appenv, check=True)
        write_nginx_conf(cfg, env)
        # Nothing of ours is running (checked above): a beat pidfile left by a killed beat is stale.
        (cfg.state_dir / "celerybeat.pid").unlink(missing_ok=True)
        cfg.supervisor_conf.write_text(supervisor_conf(cfg, appenv))
    except (StackError, subprocess.CalledProcessError, OSError) as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1

    try:
        # supervisord daemonises itself and starts the programs in order; the app's
        # environment is its own, so every program inherits it.
        subprocess.run([PY, "-m", "supervisor.supervisord", "-c", str(cfg.supervisor_conf)], env=appenv, check=True)
        wait_for("supervisord", lambda: processes(cfg) is not None, 30, cfg)
        for port in cfg.web_ports:
            wait_for(f"gunicorn on {port}", lambda port=port: http_ok(f"http://127.0.0.1:{port}/health"), 60, cfg)
        tls = ssl.create_default_context(cafile=str(cfg.cert_dir / "ca.pem"))
        wait_for("nginx", lambda: http_ok(f"{cfg.base_url}/health", tls), 30, cfg)
        wait_for("the Celery worker", lambda: worker_answers(cfg), 60, cfg)
        wait_for("every process", lambda: all(p["statename"] == "RUNNING" for p in processes(cfg) or []), 10, cfg)
    except (Exception, KeyboardInterrupt) as exc:
        print(f"stack: {exc}; stopping what started", file=sys.stderr)
        supervisor_shutdown(cfg)
        return 1

    print(f"stack: up at {cfg.base_url} (trust {cfg.cert_dir / 'ca.pem'}); http://127.0.0.1:{cfg.http_port} redirects")
    print(f"stack: replicas on {', '.join(map(str, cfg.web_ports))}; logs in {cfg.logs}; stop with `make stack-down`")
    return 0


def down(cfg: Config) -> int:
    if processes(cfg) is None:
        print("stack: not running")
        return 0
    supervisor_shutdown(cfg)
    print("stack: stopped")
    return 0


def status(cfg: Config, as_json: bool = False) -> int:
    found = processes(cfg)
    if found is None:
        print("{}" if as_json else "stack: not running")
        return 1
    if as_json:
        print(json.dumps({p["name"]: {"state": p["statename"], "pid": p["pid"]} for p in found}))
    else:
        for p in found:
            print(f"{p['name']:<8} pid {p['pid']:<8} {p['statename'].lower()}")
    return 0 if all(p["statename"] == "RUNNING" for p in found) else 1


def reload(cfg: Config, env: dict[str, str]) -> int:
    """Re-render nginx's configuration from the current environment and reload it, waiting
    until the old workers have gone so the new settings are what answers next."""
    nginx = next((p for p in processes(cfg) or [] if p["name"] == "nginx" and p["statename"] == "RUNNING"), None)
    if nginx is None:
        print("stack: nginx is not running", file=sys.stderr)
        return 1
    master = int(nginx["pid"])
    old = _children(master)
    try:
        write_nginx_conf(cfg, env)
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    supervisor(cfg).signalProcess("nginx", "HUP")
    deadline = time.monotonic() + 30
    while (old & _children(master) or not _children(master)) and time.monotonic() < deadline:
        time.sleep(0.1)
    print("stack: nginx reloaded")
    return 0


def _children(pid: int) -> set[int]:
    found = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(proc.name))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("command", choices=["up", "down", "status", "reload"])
    parser.add_argument("--replicas", type=int, help="gunicorn replicas for up (default 2)")
    parser.add_argument("--json", action="store_true", help="status as JSON: {name: {state, pid}}")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    cfg = Config.from_env(env, replicas=args.replicas)
    if args.command == "up":
        return up(cfg, env)
    if args.command == "down":
        return down(cfg)
    if args.command == "reload":
        return reload(cfg, env)
    return status(cfg, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
