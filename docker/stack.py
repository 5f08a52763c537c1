"""The production stack on one machine, without Docker: ``make stack`` / ``make stack-down``.

    python docker/stack.py up | down | status | reload

``up`` runs the migrations once, collects the static files, then starts, on loopback:

* N gunicorn replicas (``config/gunicorn.py``, gevent workers), one port each;
* a Celery worker and exactly one Celery beat;
* nginx, the OS package, rendered from ``nginx/nginx.conf.template`` with its own prefix,
  pid, temp and log paths under the state directory, so it never touches a system nginx.
  Its master is started by this user (root here); workers drop to ``www-data`` (or stay
  this user where ``www-data`` could not reach the files: see ``nginx_user``).

It uses the local Postgres and Redis, and a development certificate (``nginx/dev-cert.sh``).
Every process runs in its own process group; pids and logs live in the state directory
(``var/stack/`` by default). ``reload`` re-renders nginx's configuration from the current
environment (same ports) and reloads it gracefully. The end-to-end tests drive this file.

Environment (defaults in brackets):
    TOLLWAY_STACK_DIR [var/stack]           state: state.json, logs/, nginx/, static/
    TOLLWAY_STACK_HTTP_PORT [8080]          http://127.0.0.1:PORT redirects to HTTPS
    TOLLWAY_STACK_HTTPS_PORT [8443]
    TOLLWAY_STACK_WEB_PORTS [8101,8102]     one gunicorn replica per port
    TOLLWAY_STACK_CERT_DIR [nginx/dev-certs]
    TOLLWAY_STACK_SEED [1]                  run ``seeddemo`` (prints the demo key once)
    TOLLWAY_STACK_CELERY_CONCURRENCY [2]
    TOLLWAY_STACK_NGINX_USER [www-data]     the user nginx's workers run as
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
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
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
    """nginx lives in /usr/sbin, which a non-root PATH may lack."""
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
    database_url: str
    redis_url: str

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Config:
        def path(name: str, default: Path) -> Path:
            value = env.get(name)
            return (ROOT / value).resolve() if value else default

        return cls(
            state_dir=path("TOLLWAY_STACK_DIR", ROOT / "var" / "stack"),
            http_port=int(env.get("TOLLWAY_STACK_HTTP_PORT") or 8080),
            https_port=int(env.get("TOLLWAY_STACK_HTTPS_PORT") or 8443),
            web_ports=[int(p) for p in (env.get("TOLLWAY_STACK_WEB_PORTS") or "8101,8102").split(",") if p.strip()],
            cert_dir=path("TOLLWAY_STACK_CERT_DIR", ROOT / "nginx" / "dev-certs"),
            seed=(env.get("TOLLWAY_STACK_SEED") or "1") not in ("0", "false", "no"),
            celery_concurrency=int(env.get("TOLLWAY_STACK_CELERY_CONCURRENCY") or 2),
            database_url=env.get("DATABASE_URL") or "postgres://postgres:postgres@127.0.0.1:5432/tollway",
            redis_url=env.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
        )

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

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
        raise SystemExit("stack: nginx is not installed (apt-get install nginx)")
    # -e: log startup errors to stderr, not to the system nginx's /var/log/nginx/error.log.
    return [nginx, "-p", f"{cfg.nginx_dir}/", "-c", str(cfg.nginx_conf), "-e", "stderr", *args]


def write_nginx_conf(cfg: Config, env: dict[str, str]) -> None:
    render = _load_render()
    cfg.nginx_conf.write_text(render.render(render.TEMPLATE.read_text(), nginx_values(cfg, env)))
    result = subprocess.run(nginx_cmd(cfg, "-t", "-q"), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"stack: nginx -t failed on {cfg.nginx_conf}:\n{result.stderr}")


# --- processes -------------------------------------------------------------------------


def load_state(cfg: Config) -> dict[str, Any]:
    if cfg.state_file.exists():
        return dict(json.loads(cfg.state_file.read_text()))
    return {"processes": []}


def save_state(cfg: Config, state: dict[str, Any]) -> None:
    cfg.state_file.write_text(json.dumps(state, indent=2))


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name: [state, ppid, ...]."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(entry: dict[str, Any]) -> bool:
    """The recorded process is running and is still the one we started: its start time
    matches, so a reused pid is never signalled (nginx rewrites its command line)."""
    fields = _stat(entry["pid"])
    return fields is not None and fields[0] != "Z" and fields[19] == entry["started"]


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


def start(cfg: Config, state: dict[str, Any], name: str, argv: list[str], env: dict[str, str]) -> None:
    log = (cfg.logs / f"{name}.log").open("ab")
    # Its own session: `down` stops the process group, so a replica's workers go with it.
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    log.close()
    fields = _stat(proc.pid)
    started = fields[19] if fields else ""
    state["processes"].append({"name": name, "pid": proc.pid, "started": started, "argv": argv})
    save_state(cfg, state)


def stop_all(cfg: Config, state: dict[str, Any], timeout: float) -> None:
    """Stop nginx first, so no new requests arrive and its keepalive connections (which
    hold a gunicorn worker's graceful exit) close; then everything else. SIGTERM each
    process group, and SIGKILL what is left after ``timeout``."""
    entries = [e for e in reversed(state["processes"]) if alive(e)]
    first = [e for e in entries if e["name"] == "nginx"]
    for batch in (first, [e for e in entries if e not in first]):
        for entry in batch:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(entry["pid"], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(alive(e) for e in batch):
            time.sleep(0.1)
        for entry in batch:
            if alive(entry):
                print(f"stack: {entry['name']} did not stop in {timeout:.0f}s; killing it", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(entry["pid"], signal.SIGKILL)  # also any orphans left in its group


def wait_for(what: str, check: Any, timeout: float, cfg: Config) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} was not ready within {timeout:.0f}s; logs are in {cfg.logs}")


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


def up(cfg: Config, env: dict[str, str]) -> int:
    state = load_state(cfg)
    running = [e["name"] for e in state["processes"] if alive(e)]
    if running:
        print(f"stack: already running ({', '.join(running)}); `make stack-down` first", file=sys.stderr)
        return 1
    for path in (cfg.logs, cfg.nginx_dir / "temp", cfg.static_root, cfg.state_dir / "acme"):
        path.mkdir(parents=True, exist_ok=True)
    # nginx's workers (www-data) read the static files: the tree must be traversable.
    cfg.state_dir.chmod(0o755)
    state = {"processes": [], "config": {"https_port": cfg.https_port, "http_port": cfg.http_port}}
    save_state(cfg, state)

    subprocess.run(["bash", str(ROOT / "nginx" / "dev-cert.sh"), str(cfg.cert_dir)], check=True)
    ensure_database(cfg.database_url)
    appenv = app_env(cfg, env)
    manage = [PY, "manage.py"]
    # Migrations run once, here, before any replica starts; never from each replica.
    subprocess.run([*manage, "migrate", "--noinput"], cwd=ROOT, env=appenv, check=True)
    subprocess.run([*manage, "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, env=appenv, check=True)
    if cfg.seed:
        subprocess.run([*manage, "seeddemo"], cwd=ROOT, env=appenv, check=True)

    try:
        webenv = {**appenv, "WEB_CONCURRENCY": str(web_concurrency(appenv, len(cfg.web_ports)))}
        for index, port in enumerate(cfg.web_ports, start=1):
            argv = [PY, "-m", "gunicorn", "-c", "config/gunicorn.py", "--bind", f"127.0.0.1:{port}"]
            start(cfg, state, f"web-{index}", argv, {**webenv, "PORT": str(port)})
        celery = [PY, "-m", "celery", "-A", "config"]
        start(
            cfg,
            state,
            "worker",
            [*celery, "worker", "-n", cfg.worker_name, "--concurrency", str(cfg.celery_concurrency), "-l", "INFO"],
            appenv,
        )
        # The pidfile keeps a second beat off this state directory; nothing of ours is
        # running (checked above), so one left by a killed beat is stale.
        (cfg.state_dir / "celerybeat.pid").unlink(missing_ok=True)
        beat_files = ["--schedule", str(cfg.state_dir / "celerybeat-schedule")]
        beat_files += ["--pidfile", str(cfg.state_dir / "celerybeat.pid")]
        start(cfg, state, "beat", [*celery, "beat", *beat_files, "-l", "INFO"], appenv)
        write_nginx_conf(cfg, env)
        start(cfg, state, "nginx", nginx_cmd(cfg, "-g", "daemon off;"), env)

        for port in cfg.web_ports:
            wait_for(f"gunicorn on {port}", lambda port=port: http_ok(f"http://127.0.0.1:{port}/health"), 60, cfg)
        tls = ssl.create_default_context(cafile=str(cfg.cert_dir / "ca.pem"))
        wait_for("nginx", lambda: http_ok(f"{cfg.base_url}/health", tls), 30, cfg)
        wait_for("the Celery worker", lambda: worker_answers(cfg), 60, cfg)
        for entry in state["processes"]:
            if not alive(entry):
                raise RuntimeError(f"{entry['name']} exited; see {cfg.logs / entry['name']}.log")
    except (Exception, KeyboardInterrupt) as exc:
        print(f"stack: {exc}; stopping what started", file=sys.stderr)
        stop_all(cfg, state, timeout=10)
        return 1

    print(f"stack: up at {cfg.base_url} (trust {cfg.cert_dir / 'ca.pem'}); http://127.0.0.1:{cfg.http_port} redirects")
    print(f"stack: replicas on {', '.join(map(str, cfg.web_ports))}; logs in {cfg.logs}; stop with `make stack-down`")
    return 0


def down(cfg: Config, timeout: float) -> int:
    state = load_state(cfg)
    stop_all(cfg, state, timeout)
    cfg.state_file.unlink(missing_ok=True)
    print("stack: stopped")
    return 0


def status(cfg: Config) -> int:
    state = load_state(cfg)
    if not state["processes"]:
        print("stack: not running")
        return 1
    for entry in state["processes"]:
        print(f"{entry['name']:<8} pid {entry['pid']:<8} {'running' if alive(entry) else 'stopped'}")
    return 0 if all(alive(e) for e in state["processes"]) else 1


def reload(cfg: Config, env: dict[str, str]) -> int:
    """Re-render nginx's configuration from the current environment and reload it, waiting
    until the old workers have gone so the new settings are what answers next."""
    state = load_state(cfg)
    nginx = next((e for e in state["processes"] if e["name"] == "nginx" and alive(e)), None)
    if nginx is None:
        print("stack: nginx is not running", file=sys.stderr)
        return 1
    old = _children(nginx["pid"])
    write_nginx_conf(cfg, env)
    os.kill(nginx["pid"], signal.SIGHUP)
    wait_for("nginx's reload", lambda: not (old & _children(nginx["pid"])) and bool(_children(nginx["pid"])), 30, cfg)
    print("stack: nginx reloaded")
    return 0


def _children(pid: int) -> set[int]:
    found = set()
    for proc in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(proc.name))
        if fields is not None and int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(proc.name))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("command", choices=["up", "down", "status", "reload"])
    parser.add_argument("--stop-timeout", type=float, default=30.0, help="seconds before SIGKILL on down")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    cfg = Config.from_env(env)
    if args.command == "up":
        return up(cfg, env)
    if args.command == "down":
        return down(cfg, args.stop_timeout)
    if args.command == "reload":
        return reload(cfg, env)
    return status(cfg)


if __name__ == "__main__":
    sys.exit(main())
