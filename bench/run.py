"""Tollway's benchmark: ``make bench`` (or ``make bench QUICK=1``).

It starts the production-like local stack (``docker/stack.py``: nginx with TLS in front
of two gunicorn/gevent replicas, Postgres, Redis, a Celery worker and beat) with every
feature on: key auth, rate limits and a budget (so every call takes a reservation in
Redis and settles it), and the ledger insert. Upstreams run on loopback:

* **instant**: an nginx returning a fixed completion (it does tens of thousands of RPS
  here, so it is never the bottleneck);
* **slow**: the same nginx streaming 20 chunks over 2 s with Debian's echo module
  (``libnginx-mod-http-echo``, which ``make bench`` installs), so 2,000 streams cost it
  next to nothing; without the module, ``python -m tests.mockupstream`` does it, sharing
  the cores, and the table says so.

Scenarios (see the README's *Performance* section for the targets):

* P1 throughput: non-streaming calls at 16 and 64 connections (wrk);
* P2 concurrency: 2,000 concurrent streams against the slow upstream (wrk for
  throughput and errors, a Python probe for time to first byte), with RSS per worker;
* P3 overhead: one connection, through Tollway and directly to the upstream;
* P4 billing: a ledger of 10,000,000 rows over 10 monthly partitions (1,000,000 with
  ``--quick``), loaded by COPY with its progress shown; then the month close of the last
  month with finalisation, and ``GET /v1/usage`` for that month (``--p4``; ``--only-p4``
  runs it alone, without the stack).

Load comes from wrk, from Debian's package: C, epoll, a fixed request script. It needs
far less CPU per request than the gateway, so on this 2-core box it is not the limit;
it does share the cores, which the README says. With ``--peer litellm`` the same P1 and
P3 also run against LiteLLM's proxy (installed into ``bench/.peer-venv``) on the same
instant upstream, and the table prints Tollway's ratio to it.

Results print as a table and are written to ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
RESULTS = ROOT / "bench" / "results"
STATE = ROOT / "var" / "bench"
P4_ROWS, P4_QUICK_ROWS = 10_000_000, 1_000_000  # ledger rows, over 10 monthly partitions

FIXED_COMPLETION = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "bench",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Benchmark answer."}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


# --- upstreams -------------------------------------------------------------------------


ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")  # Debian's libnginx-mod-http-echo
SLOW_CHUNKS, SLOW_GAP = 20, 0.1  # 20 chunks over 2 s


def _sse(chunk: dict[str, Any]) -> str:
    """One SSE event as an nginx string literal (single-quoted; nginx reads the \\n)."""
    return "'data: " + json.dumps(chunk, separators=(",", ":")) + "\\n'"


def slow_stream_directives() -> str:
    """The echo module's directives for an OpenAI stream: 20 content chunks 100 ms apart,
    the finish chunk, the usage chunk and [DONE]."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": "bench-slow"}
    lines = []
    for i in range(SLOW_CHUNKS):
        delta = {"role": "assistant", "content": "tok "} if i == 0 else {"content": "tok "}
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        lines += [f"echo_sleep {SLOW_GAP};", f"echo {_sse(chunk)};", "echo_flush;"]
    lines.append(f"echo {_sse({**base, 'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})};")
    usage = {"prompt_tokens": 12, "completion_tokens": SLOW_CHUNKS, "total_tokens": 12 + SLOW_CHUNKS}
    lines.append(f"echo {_sse({**base, 'choices': [], 'usage': usage})};")
    lines.append("echo 'data: [DONE]\\n';")
    return "\n                        ".join(lines)


def start_upstreams(workdir: Path) -> tuple[subprocess.Popen[bytes], int, bool]:
    """nginx answering every POST with the same completion: the fastest possible upstream.

    With Debian's echo module it also serves ``/slow/v1/chat/completions``, the P2 stream,
    from C, so the upstream never competes with Tollway for the two cores. Returns the
    process, its port, and whether the slow stream is served.
    """
    port = free_port()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    body = json.dumps(FIXED_COMPLETION).replace("'", "\\'")
    slow = ECHO_MODULE.exists()
    load = f"load_module {ECHO_MODULE};" if slow else ""
    slow_location = (
        f"""
                    location /slow/v1/chat/completions {{
                        default_type text/event-stream;
                        echo_read_request_body;
                        {slow_stream_directives()}
                    }}"""
        if slow
        else ""
    )
    conf = workdir / "instant.conf"
    conf.write_text(
        textwrap.dedent(
            f"""
            {load}
            worker_processes 1;
            daemon off;
            pid {workdir}/instant.pid;
            error_log {workdir}/logs/instant-error.log warn;
            events {{ worker_connections 8192; }}
            http {{
                access_log off;
                client_body_temp_path {workdir}/tmp;
                keepalive_requests 1000000;
                server {{
                    listen 127.0.0.1:{port};{slow_location}
                    location / {{
                        default_type application/json;
                        return 200 '{body}';
                    }}
                }}
            }}
            """
        )
    )
    (workdir / "tmp").mkdir(exist_ok=True)
    proc = subprocess.Popen([nginx_binary(), "-p", str(workdir), "-c", str(conf)], stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port, slow


def start_slow_upstream() -> tuple[subprocess.Popen[bytes], int]:
    """The Python mock upstream, paced to the same 20 chunks over 2 s: the fallback when
    nginx's echo module is missing. It shares the cores with Tollway, which the table says."""
    port = free_port()
    proc = subprocess.Popen(
        [PY, "-m", "tests.mockupstream", "--port", str(port), "--chunk-delay-ms", "100"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    wait_port(port)
    return proc, port


def nginx_binary() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).exists():
            return candidate
    raise SystemExit("nginx is not installed: apt-get install nginx (make bench does this)")


# --- the stack -------------------------------------------------------------------------


@dataclass
class Stack:
    env: dict[str, str]
    https_port: int
    web_ports: list[int]
    ca: Path

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"


def stack_env(database_url: str, redis_url: str) -> dict[str, str]:
    web_ports = [free_port(), free_port()]
    return {
        **os.environ,
        "TOLLWAY_STACK_DIR": str(STATE / "stack"),
        "TOLLWAY_STACK_HTTP_PORT": str(free_port()),
        "TOLLWAY_STACK_HTTPS_PORT": str(free_port()),
        "TOLLWAY_STACK_WEB_PORTS": ",".join(map(str, web_ports)),
        "TOLLWAY_STACK_SEED": "0",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        # The outer nginx shield would otherwise be what the benchmark measures.
        "TOLLWAY_NGINX_RATE": "1000000r/s",
        "TOLLWAY_NGINX_BURST": "1000000",
        "TOLLWAY_NGINX_CONN_LIMIT": "60000",
        # One line per request costs a write per call; production ships them, so keep it on.
        "TOLLWAY_REQUEST_LOG": os.environ.get("TOLLWAY_REQUEST_LOG", "1"),
        "GUNICORN_ACCESSLOG": os.environ.get("GUNICORN_ACCESSLOG", ""),
    }


def stack_up(env: dict[str, str]) -> Stack:
    subprocess.run([PY, "docker/stack.py", "down"], cwd=ROOT, env=env, capture_output=True, check=False)
    result = subprocess.run([PY, "docker/stack.py", "up"], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"the stack did not start:\n{result.stdout}\n{result.stderr}")
    return Stack(
        env=env,
        https_port=int(env["TOLLWAY_STACK_HTTPS_PORT"]),
        web_ports=[int(p) for p in env["TOLLWAY_STACK_WEB_PORTS"].split(",")],
        ca=ROOT / "nginx" / "dev-certs" / "ca.pem",
    )


def stack_down(env: dict[str, str]) -> None:
    subprocess.run([PY, "docker/stack.py", "down"], cwd=ROOT, env=env, capture_output=True, check=False)


SEED = """
from decimal import Decimal
from billing.models import Model, Price
from proxy.models import Deployment, Provider
from tenants import services
from tenants.models import Tenant

tenant = Tenant.objects.filter(slug="bench").first() or services.tenant_create(slug="bench", name="Benchmark")
# Every limit is on (so every call takes and settles a reservation) but set high, so
# the benchmark measures the gateway, not the limits refusing it.
services.tenant_update(
    tenant=tenant, monthly_budget_usd=Decimal("1000000"), rpm_limit=10_000_000, tpm_limit=10_000_000_000
)
for name, url, kind in (("bench-instant", "{instant}", "openai"), ("bench-slow", "{slow}", "openai")):
    provider, _ = Provider.objects.update_or_create(name=name, defaults={{"kind": kind, "base_url": url}})
    model, _ = Model.objects.get_or_create(name=name)
    if not model.prices.exists():
        Price.objects.create(model=model, input_per_mtok=Decimal("2.50"), output_per_mtok=Decimal("10.00"))
    Deployment.objects.update_or_create(
        model=model, provider=provider, upstream_model=name, defaults={{"is_active": True}}
    )
created = services.api_key_create(
    tenant=tenant, name="bench", rpm_limit=10_000_000, monthly_budget_usd=Decimal("1000000")
)
print(created.plaintext)
"""


def seed(env: dict[str, str], instant_url: str, slow_url: str) -> str:
    code = SEED.format(instant=instant_url, slow=slow_url)
    result = subprocess.run(
        [PY, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "config.settings", "DEBUG": "0", "SECRET_KEY": "bench-seed"},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"seeding failed:\n{result.stderr}")
    return result.stdout.strip().splitlines()[-1]


# --- wrk -------------------------------------------------------------------------------


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    errors: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(
    url: str,
    *,
    connections: int,
    seconds: int,
    body: dict[str, Any],
    token: str | None,
    threads: int = 2,
    ports: list[int] | None = None,
) -> WrkResult:
    """wrk against ``url``; with ``ports``, its threads spread over those loopback ports
    (one thread per port), so one run measures several replicas with one latency record."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    headers = 'wrk.headers["Content-Type"] = "application/json"\n'
    if token:
        headers += f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    spread = ""
    if ports:
        threads = len(ports)
        listed = ", ".join(f'wrk.lookup("127.0.0.1", "{port}")[1]' for port in ports)
        spread = f"local n = 0\nfunction setup(thread)\n  local addrs = {{{listed}}}\n  n = n + 1\n"
        spread += "  thread.addr = addrs[(n - 1) % #addrs + 1]\nend\n"
    script.write_text(f'wrk.method = "POST"\nwrk.body = [[{json.dumps(body)}]]\n{headers}{spread}')
    try:
        result = subprocess.run(
            [
                "wrk",
                f"-t{min(threads, connections)}",
                f"-c{connections}",
                f"-d{seconds}s",
                "--latency",
                "--timeout",
                "30s",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 120,
        )
    finally:
        script.unlink()
    out = result.stdout
    if result.returncode != 0 or "Requests/sec" not in out:
        raise RuntimeError(f"wrk failed: {result.stdout}\n{result.stderr}")
    percentiles = dict(re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", out, re.M))
    if not {"50", "90", "99"} <= set(percentiles):
        raise RuntimeError(f"wrk printed no latency distribution:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(x) for x in m.groups())
    return WrkResult(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(percentiles["50"]),
        p90_ms=_ms(percentiles["90"]),
        p99_ms=_ms(percentiles["99"]),
        requests=requests,
        errors=errors,
    )


# --- time to first byte, for streams ----------------------------------------------------


async def _first_byte(host: str, port: int, token: str, body: bytes, tls: ssl.SSLContext) -> float:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port, ssl=tls)
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    writer.write(request)
    await writer.drain()
    first = None
    while chunk := await reader.read(65536):
        if first is None and b"data: " in chunk:
            first = time.perf_counter() - started
    writer.close()
    if first is None:
        raise RuntimeError("no SSE data arrived")
    return first


def ttfb_probe(stack: Stack, token: str, body: dict[str, Any], samples: int) -> list[float]:
    tls = ssl.create_default_context(cafile=str(stack.ca))
    payload = json.dumps(body).encode()

    async def run() -> list[float]:
        results = await asyncio.gather(
            *(_first_byte("127.0.0.1", stack.https_port, token, payload, tls) for _ in range(samples)),
            return_exceptions=True,
        )
        return [r * 1000 for r in results if isinstance(r, float)]

    return asyncio.run(run())


def _worker_statuses(env: dict[str, str]) -> list[str]:
    """/proc/<pid>/status of every gunicorn worker of the stack's replicas."""
    status = subprocess.run(
        [PY, "docker/stack.py", "status", "--json"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    masters = {p["pid"] for name, p in json.loads(status.stdout or "{}").items() if name.startswith("web")}
    found = []
    for stat in Path("/proc").glob("[0-9]*/status"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(re.search(r"PPid:\s+(\d+)", text).group(1)) in masters:  # type: ignore[union-attr]
            found.append(text)
    return found


def worker_rss_mb(stack: Stack) -> float:
    """The largest resident set among the replicas' gunicorn workers, in MB."""
    sizes = [int(m.group(1)) for t in _worker_statuses(stack.env) if (m := re.search(r"VmRSS:\s+(\d+) kB", t))]
    return max(sizes, default=0) / 1024


# --- scenarios -------------------------------------------------------------------------


@dataclass
class Report:
    machine: str
    date: str
    quick: bool
    slow_upstream: str = ""
    scenarios: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)


def p1(stack: Stack, token: str, seconds: int) -> dict[str, Any]:
    body = {"model": "bench-instant", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}
    out = {}
    for connections in (16, 64):
        out[f"c{connections}"] = asdict(
            wrk(f"{stack.base}/v1/chat/completions", connections=connections, seconds=seconds, body=body, token=token)
        )
    # Like for like with the peer (2 workers, plain HTTP, no nginx): the replicas'
    # workers directly, half the connections on each replica.
    out["app_c64"] = asdict(
        wrk(
            f"http://127.0.0.1:{stack.web_ports[0]}/v1/chat/completions",
            connections=64,
            seconds=seconds,
            body=body,
            token=token,
            ports=stack.web_ports,
        )
    )
    out["app_c64"]["workers"] = len(_worker_statuses(stack.env))
    return out


def p2(stack: Stack, token: str, streams: int, seconds: int) -> dict[str, Any]:
    body = {
        "model": "bench-slow",
        "messages": [{"role": "user", "content": "Stream"}],
        "max_tokens": 20,
        "stream": True,
    }
    # Each stream lasts 2 s, and wrk counts only streams that finish within the run: the
    # most that can finish is one per connection per whole 2 s.
    ideal = streams * (seconds // 2) / seconds
    load = wrk(f"{stack.base}/v1/chat/completions", connections=streams, seconds=seconds, body=body, token=token)
    rss = worker_rss_mb(stack)
    ttfb = sorted(ttfb_probe(stack, token, body, samples=50))
    return {
        "streams": streams,
        "rps": load.rps,
        "ideal_rps": ideal,
        "share_of_ideal": load.rps / ideal,
        "errors": load.errors,
        "stream_p50_ms": load.p50_ms,
        "ttfb_p50_ms": ttfb[len(ttfb) // 2] if ttfb else None,
        "ttfb_p99_ms": ttfb[int(len(ttfb) * 0.99) - 1] if ttfb else None,
        "max_worker_rss_mb": rss,
    }


def p3(stack: Stack, token: str, instant_port: int, seconds: int) -> dict[str, Any]:
    body = {"model": "bench-instant", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}
    direct = wrk(
        f"http://127.0.0.1:{instant_port}/v1/chat/completions",
        connections=1,
        seconds=seconds,
        body=body,
        token=None,
        threads=1,
    )
    app = wrk(
        f"http://127.0.0.1:{stack.web_ports[0]}/v1/chat/completions",
        connections=1,
        seconds=seconds,
        body=body,
        token=token,
        threads=1,
    )
    full = wrk(f"{stack.base}/v1/chat/completions", connections=1, seconds=seconds, body=body, token=token, threads=1)
    return {
        "direct": asdict(direct),
        "app_only": asdict(app),
        "through_nginx_tls": asdict(full),
        "added_p50_ms": app.p50_ms - direct.p50_ms,
        "added_p99_ms": app.p99_ms - direct.p99_ms,
        "added_p50_ms_with_nginx": full.p50_ms - direct.p50_ms,
        "added_p99_ms_with_nginx": full.p99_ms - direct.p99_ms,
    }


def p4(rows: int) -> dict[str, Any]:
    """The month close and the usage API on a ledger of ``rows`` rows over 10 monthly
    partitions (bench/billing_bench.py), on a database of its own, made afresh: the script
    refuses one that already holds tenants. Its progress is printed as it goes."""
    database = f"tollway_bench_p4_{os.getpid()}"
    admin = "postgres://postgres:postgres@127.0.0.1:5432/postgres"
    subprocess.run(["psql", admin, "-qc", f'CREATE DATABASE "{database}"'], check=True, capture_output=True)
    lines: list[str] = []
    try:
        with subprocess.Popen(
            [PY, "bench/billing_bench.py", "--rows", str(rows), "--tenants", "100"],
            cwd=ROOT,
            env={
                **os.environ,
                "DATABASE_URL": f"postgres://postgres:postgres@127.0.0.1:5432/{database}",
                "REDIS_URL": "redis://127.0.0.1:6379/9",
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                print(f"  {line.rstrip()}", flush=True)
                lines.append(line)
        returncode = proc.returncode
    finally:
        subprocess.run(["psql", admin, "-qc", f'DROP DATABASE IF EXISTS "{database}"'], capture_output=True)
    output = "".join(lines)
    found = re.search(r"month close .* in ([\d.]+)s", output)
    month_rows = re.search(r"invoices, ([\d,]+) rows of a", output)
    usage = re.search(r"GET /v1/usage .* p50 ([\d.]+) ms, p95 ([\d.]+) ms", output)
    return {
        "rows": rows,
        "month_rows": int(month_rows.group(1).replace(",", "")) if month_rows else None,
        "seconds": float(found.group(1)) if found else None,
        "usage_p50_ms": float(usage.group(1)) if usage else None,
        "usage_p95_ms": float(usage.group(2)) if usage else None,
        "ok": returncode == 0 and found is not None and usage is not None,
        "output": output[-3000:],
    }


# --- the peer -------------------------------------------------------------------------


def start_litellm(instant_port: int) -> tuple[subprocess.Popen[bytes], int, str]:
    """LiteLLM's proxy with 2 workers, no database, and a master key (it refuses to start
    without one); the same instant upstream. Returns the process, its port and the key."""
    venv = ROOT / "bench" / ".peer-venv"
    if not (venv / "bin" / "litellm").exists():
        subprocess.run([PY, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True)
    master_key = "sk-" + secrets.token_hex(32)
    config = STATE / "litellm.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            model_list:
              - model_name: bench-instant
                litellm_params:
                  model: openai/bench-instant
                  api_base: http://127.0.0.1:{instant_port}/v1
                  api_key: bench
            general_settings:
              master_key: {master_key}
            """
        )
    )
    port = free_port()
    proc = subprocess.Popen(
        [str(venv / "bin" / "litellm"), "--config", str(config), "--port", str(port), "--num_workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=open(STATE / "litellm.log", "wb"),  # noqa: SIM115  # the child holds it
    )
    wait_port(port, timeout=180)
    return proc, port, master_key


def peer(instant_port: int, seconds: int) -> dict[str, Any]:
    proc, port, key = start_litellm(instant_port)
    try:
        body = {"model": "bench-instant", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        wrk(url, connections=8, seconds=2, body=body, token=key)  # warm
        return {
            "version": _litellm_version(),
            "p1_c64": asdict(wrk(url, connections=64, seconds=seconds, body=body, token=key)),
            "p3_c1": asdict(wrk(url, connections=1, seconds=seconds, body=body, token=key, threads=1)),
        }
    finally:
        proc.terminate()
        proc.wait(30)


def _litellm_version() -> str:
    result = subprocess.run(
        [str(ROOT / "bench" / ".peer-venv" / "bin" / "pip"), "show", "litellm"], capture_output=True, text=True
    )
    found = re.search(r"^Version: (\S+)", result.stdout, re.M)
    return found.group(1) if found else "unknown"


# --- the table ------------------------------------------------------------------------


def verdicts(report: Report) -> dict[str, str]:
    s = report.scenarios
    out: dict[str, str] = {}
    if "p1" in s:
        rps = s["p1"]["c64"]["rps"]
        if "peer" in s:
            # Like for like: the replicas' workers directly against LiteLLM's 2 workers.
            mine = s["p1"]["app_c64"]
            peer_rps, peer_p99 = s["peer"]["p1_c64"]["rps"], s["peer"]["p1_c64"]["p99_ms"]
            ok = mine["rps"] >= 5 * peer_rps and mine["p99_ms"] <= peer_p99 / 5
            out["P1"] = (
                f"{'pass' if ok else 'short'}: {mine['rps'] / peer_rps:.1f}x LiteLLM's RPS (target 5x), "
                f"p99 {mine['p99_ms']:.0f} vs {peer_p99:.0f} ms ({peer_p99 / mine['p99_ms']:.1f}x lower, target 5x); "
                f"through nginx+TLS {rps / peer_rps:.1f}x"
            )
        else:
            ok = rps >= 5 * 200
            out["P1"] = f"{'pass' if ok else 'short'}: {rps:.0f} RPS vs 5x LiteLLM's documented ~200 RPS here"
    if "p2" in s:
        p = s["p2"]
        ok = p["errors"] == 0 and p["share_of_ideal"] >= 0.95 and p["max_worker_rss_mb"] <= 300
        out["P2"] = (
            f"{'pass' if ok else 'short'}: {p['errors']} errors, {p['share_of_ideal']:.0%} of ideal, "
            f"{p['max_worker_rss_mb']:.0f} MB/worker"
        )
    if "p3" in s:
        p = s["p3"]
        ok = p["added_p50_ms"] <= 2 and p["added_p99_ms"] <= 5
        out["P3"] = (
            f"{'pass' if ok else 'short'}: +{p['added_p50_ms']:.2f} ms p50, +{p['added_p99_ms']:.2f} ms p99 (app only)"
        )
    if "p4" in s and s["p4"].get("seconds") is not None:
        p = s["p4"]
        p95 = p.get("usage_p95_ms")
        ok = p["ok"] and p["seconds"] <= 60 and p95 is not None and p95 <= 100
        out["P4"] = (
            f"{'pass' if ok else 'short'}: month close {p['seconds']:.1f} s (target 60 s) for {p['month_rows'] or 0:,} "
            f"rows of a {p['rows']:,}-row ledger; GET /v1/usage p95 {p95 or 0:.1f} ms (target 100 ms)"
        )
    return out


def print_table(report: Report) -> None:
    s = report.scenarios
    print(f"\nTollway benchmark, {report.date}, {report.machine}{' (quick)' if report.quick else ''}")
    print(f"slow upstream: {report.slow_upstream}\n")
    rows = []
    if "p1" in s:
        for conns, r in s["p1"].items():
            rows.append(
                (
                    f"P1 {conns}" if conns.startswith("c") else f"P1 c64, {r.get('workers', '?')} workers direct",
                    f"{r['rps']:.0f} RPS",
                    f"p50 {r['p50_ms']:.1f} / p99 {r['p99_ms']:.1f} ms",
                    f"{r['errors']} errors",
                )
            )
    if "p2" in s:
        p = s["p2"]
        rows.append(
            (
                f"P2 {p['streams']} streams",
                f"{p['rps']:.0f} of {p['ideal_rps']:.0f} streams/s",
                f"TTFB p50 {p['ttfb_p50_ms'] or 0:.0f} / p99 {p['ttfb_p99_ms'] or 0:.0f} ms",
                f"{p['errors']} errors, {p['max_worker_rss_mb']:.0f} MB/worker",
            )
        )
    if "p3" in s:
        p = s["p3"]
        rows.append(("P3 direct", f"p50 {p['direct']['p50_ms']:.2f} ms", f"p99 {p['direct']['p99_ms']:.2f} ms", ""))
        rows.append(("P3 app only", f"+{p['added_p50_ms']:.2f} ms p50", f"+{p['added_p99_ms']:.2f} ms p99", ""))
        rows.append(
            (
                "P3 nginx+TLS",
                f"+{p['added_p50_ms_with_nginx']:.2f} ms p50",
                f"+{p['added_p99_ms_with_nginx']:.2f} ms p99",
                "",
            )
        )
    if "p4" in s:
        p = s["p4"]
        took = f"{p['seconds']:.1f} s" if p.get("seconds") is not None else "failed (see the JSON)"
        usage = f"usage p95 {p['usage_p95_ms']:.1f} ms" if p.get("usage_p95_ms") is not None else ""
        rows.append((f"P4 close, {p['rows']:,}-row ledger", took, usage, ""))
    if "peer" in s:
        r = s["peer"]["p1_c64"]
        rows.append(
            (
                f"LiteLLM {s['peer'].get('version', '')} P1 c64 direct",
                f"{r['rps']:.0f} RPS",
                f"p50 {r['p50_ms']:.1f} / p99 {r['p99_ms']:.1f} ms",
                f"{r['errors']} errors",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))
    print()
    for name, verdict in report.targets.items():
        print(f"{name}: {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Tollway benchmark")
    parser.add_argument("--quick", action="store_true", help="short runs and 500 streams instead of 2,000")
    parser.add_argument("--peer", choices=["litellm"], help="also run LiteLLM's proxy on the same upstream")
    parser.add_argument("--p4", action="store_true", help="run P4: the month close on a 10,000,000-row ledger")
    parser.add_argument("--only-p4", action="store_true", help="run P4 alone, without the stack (P1 to P3)")
    args = parser.parse_args(argv)

    if not shutil.which("wrk") and not args.only_p4:
        raise SystemExit("wrk is not installed: apt-get install wrk (make bench does this)")
    STATE.mkdir(parents=True, exist_ok=True)
    database_url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/tollway_bench")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
    seconds = 5 if args.quick else 15
    report = Report(
        machine=f"{os.cpu_count()} CPUs, {int(Path('/proc/meminfo').read_text().split()[1]) // 1024 // 1024} GiB RAM, "
        f"Python {sys.version.split()[0]}",
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        quick=args.quick,
    )
    if args.only_p4:
        run_p4(report, quick=args.quick)
        return finish(report)
    env = stack_env(database_url, redis_url)
    instant, instant_port, echo = start_upstreams(STATE / "instant")
    procs = [instant]
    if echo:
        slow_url = f"http://127.0.0.1:{instant_port}/slow/v1"
        report.slow_upstream = "nginx (echo module), 20 chunks over 2 s"
    else:
        slow, slow_port = start_slow_upstream()
        procs.append(slow)
        slow_url = f"http://127.0.0.1:{slow_port}/v1"
        report.slow_upstream = "python -m tests.mockupstream (no echo module: it shares the cores)"
    try:
        stack = stack_up(env)
        token = seed(env, f"http://127.0.0.1:{instant_port}/v1", slow_url)
        # Warm every worker's caches, as a running service has them.
        wrk(
            f"{stack.base}/v1/chat/completions",
            connections=8,
            seconds=2,
            body={"model": "bench-instant", "messages": [{"role": "user", "content": "warm"}]},
            token=token,
        )
        print("P1 throughput ...", flush=True)
        report.scenarios["p1"] = p1(stack, token, seconds)
        print("P3 overhead ...", flush=True)
        report.scenarios["p3"] = p3(stack, token, instant_port, seconds)
        print("P2 concurrency ...", flush=True)
        report.scenarios["p2"] = p2(stack, token, 500 if args.quick else 2000, 8 if args.quick else 20)
        if args.p4:
            run_p4(report, quick=args.quick)
        if args.peer:
            print("peer: LiteLLM ...", flush=True)
            report.scenarios["peer"] = peer(instant_port, seconds)
    finally:
        stack_down(env)
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    return finish(report)


def run_p4(report: Report, *, quick: bool) -> None:
    rows = P4_QUICK_ROWS if quick else P4_ROWS
    print(f"P4 month close on a {rows:,}-row ledger ...", flush=True)
    report.scenarios["p4"] = p4(rows)


def finish(report: Report) -> int:
    report.targets = verdicts(report)
    print_table(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(asdict(report), indent=2)
    (RESULTS / "latest.json").write_text(payload)
    (RESULTS / f"{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(payload)
    print(f"\nwritten to {RESULTS / 'latest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
