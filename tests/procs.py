"""Processes, read from /proc: what the live and fault tests ask of gunicorn's workers."""

from __future__ import annotations

from pathlib import Path


def children(parent: int) -> list[int]:
    """The pids of ``parent``'s child processes (a gunicorn master's workers)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm) "; comm may hold spaces
        except OSError:
            continue
        if int(fields[1]) == parent:
            pids.append(int(stat.parent.name))
    return pids
