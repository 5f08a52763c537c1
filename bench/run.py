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
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import statistics
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


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening on {port}")
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
        # As OpenAI sends it when usage was asked for (Tollway always asks): "usage":null.
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}], "usage": None}
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


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process the benchmark started, and its children: politely, then not (LiteLLM
    waits for its open streams on SIGTERM)."""
    tree = process_tree([proc.pid])
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(15)


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


def tollway_pids(stack: Stack) -> list[int]:
    """The replicas' gunicorn masters and their workers: the gateway's processes."""
    status = subprocess.run(
        [PY, "docker/stack.py", "status", "--json"], cwd=ROOT, env=stack.env, capture_output=True, text=True
    )
    masters = [p["pid"] for name, p in json.loads(status.stdout or "{}").items() if name.startswith("web")]
    return process_tree(masters)


# --- CPU time, from /proc --------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds used: user + system) of ``pid``, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_tree(roots: list[int]) -> list[int]:
    """``roots`` and every process descended from them."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """CPU time used so far by those of ``pids`` still running."""
    return sum(stat[1] for pid in pids if (stat := _proc_stat(pid)) is not None)


def rss_mb(pids: list[int]) -> float:
    """The largest resident set among ``pids``, in MB."""
    sizes = []
    for pid in pids:
        try:
            found = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
        except OSError:
            continue
        if found:
            sizes.append(int(found.group(1)))
    return max(sizes, default=0) / 1024


def measured(pids: list[int], url: str, **load: Any) -> tuple[WrkResult, float]:
    """wrk against ``url``, and the CPU seconds ``pids`` used meanwhile."""
    before = cpu_seconds(pids)
    result = wrk(url, **load)
    return result, cpu_seconds(pids) - before


def sample(pids: list[int], url: str, **load: Any) -> dict[str, Any]:
    """One run's figures, with the CPU milliseconds ``pids`` used per completed call."""
    result, cpu = measured(pids, url, **load)
    return {**asdict(result), "cpu_ms_per_call": 1000 * cpu / result.requests if result.requests and pids else None}


# --- several runs: the median and the spread -------------------------------------------


def median(samples: list[dict[str, Any]], key: str) -> float:
    values = [s[key] for s in samples if s.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def spread(samples: list[dict[str, Any]], key: str, fmt: str = ".0f") -> str:
    """``median (min-max)`` of ``key`` over the runs, or the one value when there is one run."""
    return median_range([s[key] for s in samples if s.get(key) is not None], fmt)


def median_range(values: list[float], fmt: str = ".0f") -> str:
    if not values:
        return "n/a"
    middle = format(statistics.median(values), fmt)
    if len(values) == 1:
        return middle
    return f"{middle} ({format(min(values), fmt)}-{format(max(values), fmt)})"


# --- scenarios -------------------------------------------------------------------------


@dataclass
class Report:
    machine: str
    date: str
    quick: bool
    runs: int = 1
    slow_upstream: str = ""
    scenarios: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)


INSTANT_BODY = {"model": "bench-instant", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}
SLOW_BODY = {
    "model": "bench-slow",
    "messages": [{"role": "user", "content": "Stream"}],
    "max_tokens": 20,
    "stream": True,
}
# What a client receives per stream (the usage chunk is held back, as it did not ask):
# the 20 content chunks, the finish chunk and [DONE].
RELAYED_CHUNKS = SLOW_CHUNKS + 2


@dataclass
class Peer:
    proc: subprocess.Popen[bytes]
    port: int
    key: str
    version: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"

    def pids(self) -> list[int]:
        return process_tree([self.proc.pid])


def p1(stack: Stack, token: str, seconds: int, runs: int, peer: Peer | None) -> dict[str, list[dict[str, Any]]]:
    """``runs`` rounds; in each, Tollway's three rows, then the peer's, so a noisy minute
    falls on both. Each row's CPU is its gateway's: the replicas, or LiteLLM's processes."""
    out: dict[str, list[dict[str, Any]]] = {"c16": [], "c64": [], "app_c64": []}
    if peer is not None:
        out["litellm_c64"] = []
    load = {"seconds": seconds, "body": INSTANT_BODY}
    for round_ in range(runs):
        print(f"  round {round_ + 1} of {runs}", flush=True)
        pids = tollway_pids(stack)
        for connections in (16, 64):
            out[f"c{connections}"].append(
                sample(pids, f"{stack.base}/v1/chat/completions", connections=connections, token=token, **load)
            )
        # Like for like with the peer (2 workers, plain HTTP, no nginx): the replicas'
        # workers directly, half the connections on each replica.
        direct = f"http://127.0.0.1:{stack.web_ports[0]}/v1/chat/completions"
        run = sample(pids, direct, connections=64, token=token, ports=stack.web_ports, **load)
        run["workers"] = len(_worker_statuses(stack.env))
        out["app_c64"].append(run)
        if peer is not None:
            out["litellm_c64"].append(sample(peer.pids(), peer.url, connections=64, token=peer.key, **load))
    return out


STALL_MS = 20.0


def commit_probe(database_url: str, seconds: float) -> dict[str, Any]:
    """One-row INSERTs committed one after another, on the stack's Postgres: what a commit
    (a WAL flush to this machine's disk) costs here. Every call Tollway answers waits for
    its ledger row's commit, so a disk that stalls its flushes stalls those calls; wrk
    corrects its percentiles for coordinated omission, so each stall counts as the calls
    it held up, and a few per second set P3's p99."""
    import psycopg

    took: list[float] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_commit_probe (id bigserial PRIMARY KEY, at timestamptz)")
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                started = time.perf_counter()
                conn.execute("INSERT INTO bench_commit_probe (at) VALUES (now())")
                took.append(1000 * (time.perf_counter() - started))
        finally:
            conn.execute("DROP TABLE bench_commit_probe")
    stalls = [ms for ms in took if ms > STALL_MS]
    took.sort()
    return {
        "commits": len(took),
        "p50_ms": took[len(took) // 2],
        "p99_ms": took[int(len(took) * 0.99)],
        "max_ms": took[-1],
        "stalls_per_s": len(stalls) / seconds,
        "stalled_share": sum(stalls) / 1000 / seconds,
    }


def p3(
    stack: Stack, token: str, instant_port: int, seconds: int, runs: int, peer: Peer | None, database_url: str
) -> dict[str, Any]:
    """One connection, ``runs`` rounds alternating Tollway and the peer. The added latency
    is taken within each round (Tollway minus the direct call just before it). Each round
    also probes what a Postgres commit costs on this machine just then (:func:`commit_probe`)."""
    rows: dict[str, list[dict[str, Any]]] = {"direct": [], "app_only": [], "through_nginx_tls": [], "commit": []}
    if peer is not None:
        rows["litellm_c1"] = []
    added: list[dict[str, float]] = []
    one = {"connections": 1, "seconds": seconds, "body": INSTANT_BODY, "threads": 1}
    for round_ in range(runs):
        print(f"  round {round_ + 1} of {runs}", flush=True)
        pids = tollway_pids(stack)
        direct = sample([], f"http://127.0.0.1:{instant_port}/v1/chat/completions", token=None, **one)
        app = sample(pids, f"http://127.0.0.1:{stack.web_ports[0]}/v1/chat/completions", token=token, **one)
        full = sample(pids, f"{stack.base}/v1/chat/completions", token=token, **one)
        rows["commit"].append(commit_probe(database_url, max(seconds // 3, 2)))
        rows["direct"].append(direct)
        rows["app_only"].append(app)
        rows["through_nginx_tls"].append(full)
        added.append(
            {
                "p50_ms": app["p50_ms"] - direct["p50_ms"],
                "p99_ms": app["p99_ms"] - direct["p99_ms"],
                "p50_ms_with_nginx": full["p50_ms"] - direct["p50_ms"],
                "p99_ms_with_nginx": full["p99_ms"] - direct["p99_ms"],
            }
        )
        if peer is not None:
            rows["litellm_c1"].append(sample(peer.pids(), peer.url, token=peer.key, **one))
    return {**rows, "added": added}


def p2_row(url: str, token: str | None, streams: int, seconds: int, pids: list[int]) -> dict[str, Any]:
    """``streams`` concurrent streams for ``seconds``: completed streams/s against the
    ideal, errors, the gateway's CPU per relayed chunk and its largest process."""
    # Each stream lasts 2 s, and wrk counts only streams that finish within the run: the
    # most that can finish is one per connection per whole 2 s.
    ideal = streams * (seconds // 2) / seconds
    load, cpu = measured(pids, url, connections=streams, seconds=seconds, body=SLOW_BODY, token=token)
    chunks = load.requests * RELAYED_CHUNKS
    return {
        "streams": streams,
        "rps": load.rps,
        "ideal_rps": ideal,
        "share_of_ideal": load.rps / ideal,
        "errors": load.errors,
        "stream_p50_ms": load.p50_ms,
        "cpu_us_per_chunk": 1e6 * cpu / chunks if chunks else None,
        "max_process_rss_mb": rss_mb(pids),
    }


def p2(
    stack: Stack, token: str, streams: int, seconds: int, alone: tuple[int, list[int]] | None, peer: Peer | None
) -> dict[str, Any]:
    """Tollway through nginx+TLS; nginx alone (TLS, proxy_pass to the same upstream: the
    best any gateway can do on this box); and LiteLLM's proxy, direct."""
    print("  Tollway", flush=True)
    pids = tollway_pids(stack)
    out = {"tollway": p2_row(f"{stack.base}/v1/chat/completions", token, streams, seconds, pids)}
    out["tollway"]["max_worker_rss_mb"] = worker_rss_mb(stack)
    ttfb = sorted(ttfb_probe(stack, token, SLOW_BODY, samples=50))
    out["tollway"]["ttfb_p50_ms"] = ttfb[len(ttfb) // 2] if ttfb else None
    out["tollway"]["ttfb_p99_ms"] = ttfb[int(len(ttfb) * 0.99) - 1] if ttfb else None
    if alone is not None:
        print("  nginx alone", flush=True)
        port, nginx_pids = alone
        out["nginx_alone"] = p2_row(f"https://127.0.0.1:{port}/v1/chat/completions", None, streams, seconds, nginx_pids)
    if peer is not None:
        print("  LiteLLM", flush=True)
        out["litellm"] = p2_row(peer.url, peer.key, streams, seconds, peer.pids())
    return out


def start_nginx_alone(workdir: Path, slow_url: str, cert_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """nginx with TLS as the stack's front has it, proxying straight to the slow upstream,
    unbuffered: P2's ceiling on this machine."""
    port = free_port()
    target = httpx_free_split(slow_url)
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    conf = workdir / "alone.conf"
    conf.write_text(
        textwrap.dedent(
            f"""
            worker_processes auto;
            daemon off;
            pid {workdir}/alone.pid;
            error_log {workdir}/logs/alone-error.log warn;
            events {{ worker_connections 8192; }}
            http {{
                access_log off;
                client_body_temp_path {workdir}/tmp;
                upstream slow {{ server {target[0]}; keepalive 64; }}
                server {{
                    listen 127.0.0.1:{port} ssl;
                    ssl_certificate {cert_dir / "cert.pem"};
                    ssl_certificate_key {cert_dir / "key.pem"};
                    ssl_protocols TLSv1.2 TLSv1.3;
                    ssl_session_cache shared:bench_alone:10m;
                    location = /v1/chat/completions {{
                        proxy_pass http://slow{target[1]}/chat/completions;
                        proxy_http_version 1.1;
                        proxy_set_header Connection "";
                        proxy_buffering off;
                    }}
                }}
            }}
            """
        )
    )
    proc = subprocess.Popen([nginx_binary(), "-p", str(workdir), "-c", str(conf)], stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def httpx_free_split(url: str) -> tuple[str, str]:
    """``http://host:port/path`` as ("host:port", "/path")."""
    found = re.fullmatch(r"http://([^/]+)(/.*)?", url)
    if not found:
        raise ValueError(url)
    return found.group(1), (found.group(2) or "").rstrip("/")


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


PEER_REQUIREMENTS = ROOT / "bench" / "requirements-peer.txt"


def start_litellm(instant_port: int, slow_url: str) -> Peer:
    """LiteLLM's proxy with 2 workers, no database, and a master key (it refuses to start
    without one); the same upstreams. Installed from PyPI at the version
    ``bench/requirements-peer.txt`` pins, into ``bench/.peer-venv``."""
    venv = ROOT / "bench" / ".peer-venv"
    pinned = re.search(r"==(\S+)", PEER_REQUIREMENTS.read_text())
    if not (venv / "bin" / "litellm").exists() or (pinned and _litellm_version() != pinned.group(1)):
        subprocess.run([PY, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-r", str(PEER_REQUIREMENTS)], check=True)
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
              - model_name: bench-slow
                litellm_params:
                  model: openai/bench-slow
                  api_base: {slow_url}
                  api_key: bench
            general_settings:
              master_key: {master_key}
            """
        )
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            *(str(venv / "bin" / "litellm"), "--config", str(config), "--port", str(port), "--num_workers", "2"),
            # uvicorn kills a worker that does not answer its health check within 5 s; a
            # worker still importing LiteLLM on a busy box would be killed and restarted forever.
            *("--timeout_worker_healthcheck", "120"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(STATE / "litellm.log", "wb"),  # noqa: SIM115  # the child holds it
        env=peer_env(),
    )
    try:
        wait_port(port, timeout=300, proc=proc)  # its log: var/bench/litellm.log
    except BaseException:
        stop(proc)  # not yet in main's list of processes to stop
        raise
    peer = Peer(proc=proc, port=port, key=master_key, version=_litellm_version())
    wrk(peer.url, connections=8, seconds=2, body=INSTANT_BODY, token=peer.key)  # warm
    return peer


def peer_env() -> dict[str, str]:
    """LiteLLM's environment: none of ours. It reads ``DATABASE_URL`` and ``REDIS_URL``
    itself and would then want a database; it uses its bundled price map rather than
    fetching one from GitHub at start (the box may be offline)."""
    kept = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "TMPDIR") if name in os.environ}
    return {**kept, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def _litellm_version() -> str:
    pip = ROOT / "bench" / ".peer-venv" / "bin" / "pip"
    if not pip.exists():
        return "none"
    result = subprocess.run([str(pip), "show", "litellm"], capture_output=True, text=True)
    found = re.search(r"^Version: (\S+)", result.stdout, re.M)
    return found.group(1) if found else "unknown"


# --- the table ------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "pass" if ok else "short"


def verdicts(report: Report) -> dict[str, str]:
    """Each target, judged on the median of the runs."""
    s = report.scenarios
    out: dict[str, str] = {}
    if "p1" in s:
        p = s["p1"]
        app_rps, app_p99, front_rps = (
            median(p["app_c64"], "rps"),
            median(p["app_c64"], "p99_ms"),
            median(p["c64"], "rps"),
        )
        if p.get("litellm_c64"):
            peer_rps, peer_p99 = median(p["litellm_c64"], "rps"), median(p["litellm_c64"], "p99_ms")
            ok = app_rps >= 5 * peer_rps and app_p99 <= peer_p99 / 5 and front_rps >= 5 * peer_rps
            out["P1"] = (
                f"{_verdict(ok)} (medians of {len(p['app_c64'])} runs): {app_rps / peer_rps:.1f}x LiteLLM's RPS "
                f"(target 5x), p99 {app_p99:.0f} vs {peer_p99:.0f} ms ({peer_p99 / app_p99:.1f}x lower, target 5x); "
                f"through nginx+TLS {front_rps / peer_rps:.1f}x (target 5x)"
            )
        else:
            ok = front_rps >= 5 * 200
            out["P1"] = f"{_verdict(ok)}: {front_rps:.0f} RPS vs 5x LiteLLM's documented ~200 RPS here (no peer run)"
    if "p2" in s:
        p = s["p2"]
        mine = p["tollway"]
        checks = [
            (mine["errors"] == 0, f"{mine['errors']} errors"),
            (mine["max_worker_rss_mb"] <= 300, f"{mine['max_worker_rss_mb']:.0f} MB/worker (max 300)"),
        ]
        if "litellm" in p:
            if p["litellm"]["rps"]:
                ratio = mine["rps"] / p["litellm"]["rps"]
                checks.append((ratio >= 5, f"{ratio:.1f}x LiteLLM's streams/s (target 5x)"))
            else:
                checks.append((mine["rps"] > 0, "LiteLLM completed no stream"))
        if "nginx_alone" in p:
            share = mine["rps"] / p["nginx_alone"]["rps"] if p["nginx_alone"]["rps"] else 0.0
            checks.append((share >= 0.6, f"{share:.0%} of nginx alone (target 60 %)"))
        ok = all(passed for passed, _ in checks)
        out["P2"] = (
            f"{_verdict(ok)}: " + ", ".join(text for _, text in checks) + f"; {mine['share_of_ideal']:.0%} of ideal"
        )
    if "p3" in s:
        added = s["p3"]["added"]
        p50, p99 = median(added, "p50_ms"), median(added, "p99_ms")
        out["P3"] = (
            f"{_verdict(p50 <= 2 and p99 <= 5)} (medians of {len(added)} runs): +{p50:.2f} ms p50 (max 2), "
            f"+{p99:.2f} ms p99 (max 5), app only"
        )
        if commits := s["p3"].get("commit"):
            # Every answer waits for its ledger row's commit: say what the disk did meanwhile.
            out["P3"] += (
                f"; Postgres commits on this disk: {median(commits, 'stalls_per_s'):.1f} stalls/s over "
                f"{STALL_MS:.0f} ms, longest {median(commits, 'max_ms'):.0f} ms"
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


def table_rows(report: Report) -> list[tuple[str, ...]]:
    """The table: figures are ``median (min-max)`` over the runs."""
    s = report.scenarios
    rows: list[tuple[str, ...]] = [("scenario", "throughput", "latency, ms", "CPU", "other")]
    cpu_call = "{} ms/call"
    if "p1" in s:
        p = s["p1"]
        names = {
            "c16": "P1 c16 nginx+TLS",
            "c64": "P1 c64 nginx+TLS",
            "app_c64": f"P1 c64, {p['app_c64'][0].get('workers', '?')} workers direct",
            "litellm_c64": f"LiteLLM {s.get('peer_version', '')} P1 c64 direct",
        }
        for key, runs in p.items():
            rows.append(
                (
                    names[key],
                    f"{spread(runs, 'rps')} RPS",
                    f"p50 {spread(runs, 'p50_ms', '.1f')} / p99 {spread(runs, 'p99_ms', '.1f')}",
                    cpu_call.format(spread(runs, "cpu_ms_per_call", ".2f")),
                    f"{sum(r['errors'] for r in runs)} errors",
                )
            )
    if "p3" in s:
        p = s["p3"]
        rows.append(("P3 direct", "", f"p50 {spread(p['direct'], 'p50_ms', '.2f')}", "", ""))
        for key, label in (("app_only", "P3 app only"), ("through_nginx_tls", "P3 nginx+TLS")):
            suffix = "" if key == "app_only" else "_with_nginx"
            rows.append(
                (
                    label,
                    "",
                    f"+{spread(p['added'], 'p50_ms' + suffix, '.2f')} p50"
                    f" / +{spread(p['added'], 'p99_ms' + suffix, '.2f')} p99",
                    cpu_call.format(spread(p[key], "cpu_ms_per_call", ".2f")),
                    "",
                )
            )
        if p.get("commit"):
            rows.append(
                (
                    "Postgres commit (this disk)",
                    "",
                    f"p50 {spread(p['commit'], 'p50_ms', '.2f')} / p99 {spread(p['commit'], 'p99_ms', '.2f')}"
                    f" / max {spread(p['commit'], 'max_ms', '.0f')}",
                    "",
                    f"stalls over {STALL_MS:.0f} ms: {spread(p['commit'], 'stalls_per_s', '.1f')}/s,"
                    f" {spread(p['commit'], 'stalled_share', '.1%')} of the time",
                )
            )
        if p.get("litellm_c1"):
            rows.append(
                (
                    "LiteLLM P3 whole call",
                    "",
                    f"p50 {spread(p['litellm_c1'], 'p50_ms', '.2f')} / p99 {spread(p['litellm_c1'], 'p99_ms', '.2f')}",
                    cpu_call.format(spread(p["litellm_c1"], "cpu_ms_per_call", ".2f")),
                    "",
                )
            )
    if "p2" in s:
        labels = {"tollway": "P2 Tollway", "nginx_alone": "P2 nginx alone", "litellm": "P2 LiteLLM"}
        for key, p in s["p2"].items():
            other = f"{p['errors']} errors, {p['max_process_rss_mb']:.0f} MB max process"
            if key == "tollway" and p.get("ttfb_p50_ms") is not None:
                other += f", TTFB p50 {p['ttfb_p50_ms']:.0f} / p99 {p['ttfb_p99_ms'] or 0:.0f} ms"
            cpu = p.get("cpu_us_per_chunk")
            rows.append(
                (
                    f"{labels[key]} {p['streams']} streams",
                    f"{p['rps']:.0f} of {p['ideal_rps']:.0f} streams/s ({p['share_of_ideal']:.0%} of ideal)",
                    f"stream p50 {p['stream_p50_ms']:.0f}",
                    f"{cpu:.0f} µs/chunk" if cpu is not None else "",
                    other,
                )
            )
    if "p4" in s:
        p = s["p4"]
        took = f"{p['seconds']:.1f} s" if p.get("seconds") is not None else "failed (see the JSON)"
        usage = f"usage p95 {p['usage_p95_ms']:.1f} ms" if p.get("usage_p95_ms") is not None else ""
        rows.append((f"P4 close, {p['rows']:,}-row ledger", took, usage, "", ""))
    return rows


def print_table(report: Report) -> None:
    print(f"\nTollway benchmark, {report.date}, {report.machine}{' (quick)' if report.quick else ''}")
    print(f"slow upstream: {report.slow_upstream}; P1 and P3: median (min-max) of {report.runs} runs\n")
    rows = table_rows(report)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    print()
    for name, verdict in report.targets.items():
        print(f"{name}: {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Tollway benchmark")
    parser.add_argument("--quick", action="store_true", help="short runs and 500 streams instead of 2,000")
    parser.add_argument("--peer", choices=["litellm"], help="also run LiteLLM's proxy on the same upstreams")
    parser.add_argument("--p4", action="store_true", help="run P4: the month close on a 10,000,000-row ledger")
    parser.add_argument("--only-p4", action="store_true", help="run P4 alone, without the stack (P1 to P3)")
    parser.add_argument("--runs", type=int, default=3, help="rounds of P1 and P3 (at least 3 for a verdict)")
    args = parser.parse_args(argv)

    if not shutil.which("wrk") and not args.only_p4:
        raise SystemExit("wrk is not installed: apt-get install wrk (make bench does this)")
    STATE.mkdir(parents=True, exist_ok=True)
    database_url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/tollway_bench")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
    seconds = 3 if args.quick else 15
    report = Report(
        machine=f"{os.cpu_count()} CPUs, {int(Path('/proc/meminfo').read_text().split()[1]) // 1024 // 1024} GiB RAM, "
        f"Python {sys.version.split()[0]}",
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        quick=args.quick,
        runs=args.runs,
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
    peer: Peer | None = None
    try:
        stack = stack_up(env)
        token = seed(env, f"http://127.0.0.1:{instant_port}/v1", slow_url)
        alone, alone_port = start_nginx_alone(STATE / "alone", slow_url, stack.ca.parent)
        procs.append(alone)
        if args.peer:
            print("peer: starting LiteLLM ...", flush=True)
            peer = start_litellm(instant_port, slow_url)
            report.scenarios["peer_version"] = peer.version
            procs.append(peer.proc)
        # Warm every worker's caches, as a running service has them.
        wrk(f"{stack.base}/v1/chat/completions", connections=8, seconds=2, body=INSTANT_BODY, token=token)
        print("P1 throughput ...", flush=True)
        report.scenarios["p1"] = p1(stack, token, seconds, args.runs, peer)
        print("P3 overhead ...", flush=True)
        report.scenarios["p3"] = p3(stack, token, instant_port, seconds, args.runs, peer, database_url)
        print("P2 concurrency ...", flush=True)
        report.scenarios["p2"] = p2(
            stack,
            token,
            500 if args.quick else 2000,
            8 if args.quick else 20,
            (alone_port, process_tree([alone.pid])),
            peer,
        )
        if args.p4:
            run_p4(report, quick=args.quick)
    finally:
        stack_down(env)
        for proc in procs:
            stop(proc)
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
