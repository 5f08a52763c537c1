"""Real Redis high-availability topologies for the tests and the bench: a Sentinel set
(a master, a replica and three sentinels) and a three-node Redis Cluster, each started on
free loopback ports under a temporary directory and stopped by pid.

Debian's ``redis-server`` runs both (a sentinel is ``redis-server sentinel.conf
--sentinel``; the ``redis-sentinel`` package is the same binary with a service;
``.ci/run`` installs it); the cluster is made with ``redis-cli --cluster create``.
Nothing here touches the shared Redis.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MASTER_NAME = "tollway"


def free_port(*, bus: bool = False) -> int:
    """A free loopback port; with ``bus``, one whose cluster bus port (+10000) is free too."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not bus:
            return port
        if port + 10000 <= 65535:
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


def wait_until(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def available() -> str | None:
    """Why these topologies cannot run here, or None if they can."""
    for binary in ("redis-server", "redis-cli"):
        if shutil.which(binary) is None:
            return f"{binary} is not installed (apt-get install redis-server redis-sentinel; .ci/run does it)"
    return None


def ask(port: int, *command: str, timeout: float = 2.0) -> str:
    """One command through ``redis-cli`` (no client library state), its reply as text."""
    try:
        result = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:  # a server still starting on a loaded box: no answer yet
        return ""
    return result.stdout.strip()


class RedisProcess:
    """One ``redis-server`` (or sentinel) in the foreground, by pid, without persistence."""

    def __init__(self, base: Path, name: str, args: list[str], *, config: str | None = None) -> None:
        self.dir = base / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(bus="--cluster-enabled" in args)
        self.name = name
        self.args = args
        self.config = config
        self.proc: subprocess.Popen[Any] | None = None

    def start(self) -> None:
        command = ["redis-server"]
        if self.config is not None:  # a sentinel rewrites its config file: it must be its own
            path = self.dir / "sentinel.conf"
            path.write_text(self.config.replace("{port}", str(self.port)).replace("{dir}", str(self.dir)))
            command += [str(path), "--sentinel"]
        else:
            command += ["--port", str(self.port), "--save", "", "--appendonly", "no", "--dir", str(self.dir)]
            command += ["--bind", "127.0.0.1", "--protected-mode", "no", *self.args]
        log = (self.dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(command, stdout=log, stderr=log)
        log.close()
        wait_until(lambda: ask(self.port, "PING", timeout=1) == "PONG", 15, f"{self.name} on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: the process dies at once, as a machine that loses power."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text()[-3000:] if path.exists() else ""


class SentinelSet:
    """A master, one replica and three sentinels (quorum 2) watching ``MASTER_NAME``.
    A failover takes a few seconds: the sentinels call the master down after 1 s."""

    def __init__(self, base: Path) -> None:
        self.master = RedisProcess(base, "master", [])
        self.master.start()
        self.replica = RedisProcess(base, "replica", ["--replicaof", "127.0.0.1", str(self.master.port)])
        self.replica.start()
        wait_until(self._replica_synced, 30, "the replica to sync")
        config = "\n".join(
            [
                "port {port}",
                "bind 127.0.0.1",
                "protected-mode no",
                "dir {dir}",
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 2",
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000",
                f"sentinel failover-timeout {MASTER_NAME} 5000",
                f"sentinel parallel-syncs {MASTER_NAME} 1",
                "",
            ]
        )
        self.sentinels = [RedisProcess(base, f"sentinel-{i}", [], config=config) for i in range(3)]
        for sentinel in self.sentinels:
            sentinel.start()
        wait_until(self._sentinels_know_each_other, 30, "the sentinels to find each other", every=0.2)

    def _replica_synced(self) -> bool:
        return "master_link_status:up" in ask(self.replica.port, "INFO", "replication")

    def _sentinels_know_each_other(self) -> bool:
        return all(ask(s.port, "SENTINEL", "CKQUORUM", MASTER_NAME).startswith("OK") for s in self.sentinels) and all(
            "num-other-sentinels" in ask(s.port, "SENTINEL", "MASTER", MASTER_NAME) for s in self.sentinels
        )

    @property
    def addresses(self) -> str:
        """``REDIS_SENTINELS``: host:port of each sentinel."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def env(self, db: int = 0) -> dict[str, str]:
        """What the app needs to use this set (docs/deploying/redis.md)."""
        return {
            "REDIS_SENTINELS": self.addresses,
            "REDIS_SENTINEL_MASTER": MASTER_NAME,
            "REDIS_URL": f"redis://{MASTER_NAME}/{db}",
        }

    def master_port(self) -> int:
        """The port the sentinels name as master now."""
        reply = ask(self.sentinels[0].port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME).split()
        return int(reply[-1])

    def kill_master(self) -> None:
        """SIGKILL the master; the sentinels promote the replica."""
        self.master.kill()

    def wait_for_failover(self, timeout: float = 60.0) -> None:
        old = self.master.port
        wait_until(lambda: self.master_port() != old, timeout, "the sentinels to promote the replica", every=0.2)
        wait_until(
            lambda: "role:master" in ask(self.replica.port, "INFO", "replication"),
            timeout,
            "the replica to become master",
        )

    def logs(self) -> str:
        parts = [self.master, self.replica, *self.sentinels]
        return "\n".join(f"--- {p.name}\n{p.log()}" for p in parts)

    def close(self) -> None:
        for process in [*self.sentinels, self.replica, self.master]:
            process.kill()


class Cluster:
    """Three masters (no replicas) sharing the 16,384 hash slots."""

    def __init__(self, base: Path, nodes: int = 3) -> None:
        self.nodes = [
            RedisProcess(
                base,
                f"node-{i}",
                ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"],
            )
            for i in range(nodes)
        ]
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_until(self._ok, 30, "the cluster to cover every slot", every=0.2)

    def _ok(self) -> bool:
        return all("cluster_state:ok" in ask(node.port, "CLUSTER", "INFO") for node in self.nodes)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def env(self) -> dict[str, str]:
        """What the app needs to use this cluster (docs/deploying/redis.md); Celery's broker
        must be elsewhere (here: in memory, for servers that never enqueue)."""
        return {"REDIS_CLUSTER": "1", "REDIS_URL": self.url}

    def keys_per_node(self) -> list[int]:
        return [int(ask(node.port, "DBSIZE") or 0) for node in self.nodes]

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
