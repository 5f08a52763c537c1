"""Two or more versions of Tollway, measured in one sitting: ``make bench-compare``.

A change to the hot path is worth what it measures before and after on the same machine
in the same minutes: this box's speed drifts by a factor of two between sessions, and by
a tenth within one. So every version's stack is up at once (each from its own git
worktree, with its own Postgres database and Redis database), and the rounds alternate
between them: P1 at 64 connections straight to the replicas, P3 at one connection, and,
with ``--p2``, P2's 2,000 streams. Each figure is the median of the rounds, with the
range, and each version's CPU per call is read from ``/proc`` as ``make bench`` does.

    .venv/bin/python bench/compare.py HEAD~1 HEAD          # or: make bench-compare A=HEAD~1 B=HEAD
    .venv/bin/python bench/compare.py main . --rounds 5 --p2

A version is a git revision (checked out under ``var/compare/<sha>`` as a worktree) or a
directory holding a tree (``.`` for the working tree, uncommitted changes included).
Every version runs with this checkout's virtualenv: compare versions with the same
``requirements.txt``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script, bench/ is on the path, not the project

from bench.run import median_range  # noqa: E402

WORKTREES = ROOT / "var" / "compare"
REDIS_DB_FIRST = 11  # make bench uses 10; the shared Redis is never flushed


@dataclass
class Version:
    label: str
    tree: Path
    bench: ModuleType
    stack: Any = None
    token: str = ""
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def resolve(ref: str) -> tuple[str, Path]:
    """``ref``'s label and tree: a directory as it is, or a revision in a worktree."""
    path = Path(ref)
    if path.is_dir() and (path / "bench" / "run.py").exists():
        return (ref if ref != "." else "working tree"), path.resolve()
    found = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=ROOT, capture_output=True, text=True
    )
    if found.returncode != 0:
        raise SystemExit(f"{ref!r} is neither a tree nor a git revision")
    sha = found.stdout.strip()
    tree = WORKTREES / sha[:12]
    if not (tree / "bench" / "run.py").exists():
        WORKTREES.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", "--force", str(tree), sha], cwd=ROOT, check=True)
    return f"{ref} ({sha[:7]})", tree


def load_bench(tree: Path, index: int) -> ModuleType:
    """That tree's bench/run.py, as a module of its own: its stack runs that tree's code."""
    spec = importlib.util.spec_from_file_location(f"bench_run_{index}", tree / "bench" / "run.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {tree / 'bench' / 'run.py'}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    setattr(module, "STATE", ROOT / "var" / "compare" / f"state-{index}")  # noqa: B010  # its own stack directory
    return module


def figures(version: Version) -> dict[str, list[float]]:
    """Each measured figure of a version, one value per round."""
    rows = version.rows
    out: dict[str, list[float]] = {}

    def keep(name: str, row: str, key: str) -> None:
        values = [r[key] for r in rows.get(row, []) if r.get(key) is not None]
        if values:
            out[name] = values

    keep("P1 c64 direct, RPS", "p1", "rps")
    keep("P1 CPU, ms/call", "p1", "cpu_ms_per_call")
    keep("P1 p99, ms", "p1", "p99_ms")
    keep("P3 added p50, ms", "p3", "added_p50_ms")
    keep("P3 added p99, ms", "p3", "added_p99_ms")
    keep("P3 CPU, ms/call", "p3", "cpu_ms_per_call")
    keep("P2 streams/s", "p2", "rps")
    keep("P2 CPU, µs/chunk", "p2", "cpu_us_per_chunk")
    return out


def table(versions: list[Version]) -> list[tuple[str, ...]]:
    """Each figure's median (range) per version, and each later version's change against
    the first one's median."""
    columns = [figures(v) for v in versions]
    names = [name for name in columns[0] if all(name in c for c in columns)]
    rows: list[tuple[str, ...]] = [("", *(v.label for v in versions))]
    for name in names:
        base = statistics.median(columns[0][name])
        cells = [median_range(columns[0][name], ".2f")]
        for column in columns[1:]:
            value = statistics.median(column[name])
            change = f" {100 * (value - base) / base:+.0f} %" if base else ""
            cells.append(median_range(column[name], ".2f") + change)
        rows.append((name, *cells))
    return rows


def run_round(version: Version, instant_port: int, seconds: int, p2: bool) -> None:
    bench, stack = version.bench, version.stack
    pids = bench.tollway_pids(stack)
    direct = f"http://127.0.0.1:{stack.web_ports[0]}/v1/chat/completions"
    load = {"seconds": seconds, "body": bench.INSTANT_BODY, "token": version.token}
    version.rows.setdefault("p1", []).append(bench.sample(pids, direct, connections=64, ports=stack.web_ports, **load))
    one = {"connections": 1, "threads": 1, "seconds": seconds, "body": bench.INSTANT_BODY}
    upstream = bench.sample([], f"http://127.0.0.1:{instant_port}/v1/chat/completions", token=None, **one)
    app = bench.sample(pids, direct, token=version.token, **one)
    app["added_p50_ms"] = app["p50_ms"] - upstream["p50_ms"]
    app["added_p99_ms"] = app["p99_ms"] - upstream["p99_ms"]
    version.rows.setdefault("p3", []).append(app)
    if p2:
        url = f"{stack.base}/v1/chat/completions"
        version.rows.setdefault("p2", []).append(bench.p2_row(url, version.token, 2000, 20, pids))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Versions of Tollway measured in one sitting")
    parser.add_argument("versions", nargs="+", help="git revisions or tree directories; the first is the baseline")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating the versions (default 3)")
    parser.add_argument("--seconds", type=int, default=10, help="seconds per P1 and P3 run (default 10)")
    parser.add_argument("--p2", action="store_true", help="also 2,000 streams for 20 s per version and round")
    args = parser.parse_args(argv)
    if len(args.versions) < 2:
        parser.error("give at least two versions")

    versions = []
    for index, ref in enumerate(args.versions):
        label, tree = resolve(ref)
        versions.append(Version(label, tree, load_bench(tree, index)))
    first = versions[0].bench
    instant, instant_port, echo = first.start_upstreams(ROOT / "var" / "compare" / "instant")
    slow_url = f"http://127.0.0.1:{instant_port}/slow/v1"
    if args.p2 and not echo:
        raise SystemExit("--p2 needs nginx's echo module (make bench installs libnginx-mod-http-echo)")
    envs = []
    try:
        for index, version in enumerate(versions):
            print(f"starting {version.label} ...", flush=True)
            env = version.bench.stack_env(
                f"postgres://postgres:postgres@127.0.0.1:5432/tollway_compare_{index}",
                f"redis://127.0.0.1:6379/{REDIS_DB_FIRST + index}",
            )
            envs.append((version.bench, env))
            version.stack = version.bench.stack_up(env)
            version.token = version.bench.seed(env, f"http://127.0.0.1:{instant_port}/v1", slow_url)
            warm = f"http://127.0.0.1:{version.stack.web_ports[0]}/v1/chat/completions"
            version.bench.wrk(warm, connections=8, seconds=2, body=first.INSTANT_BODY, token=version.token)
        for round_ in range(args.rounds):
            order = versions[round_ % len(versions) :] + versions[: round_ % len(versions)]
            for version in order:
                print(f"round {round_ + 1} of {args.rounds}: {version.label}", flush=True)
                run_round(version, instant_port, args.seconds, args.p2)
    finally:
        for bench, env in envs:
            bench.stack_down(env)
        first.stop(instant)
    rows = table(versions)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: median (min-max) of {args.rounds} rounds")
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
