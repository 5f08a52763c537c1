"""bench/compare.py: versions resolved to trees of their own, and each figure's median per
version with its change against the first, so a before-and-after reads at a glance."""

from __future__ import annotations

import subprocess
from types import ModuleType
from typing import Any

import pytest

from bench import compare


def version(label: str, rps: list[float], p50: list[float]) -> compare.Version:
    rows: dict[str, list[dict[str, Any]]] = {
        "p1": [{"rps": r, "cpu_ms_per_call": 1.0, "p99_ms": 100.0} for r in rps],
        "p3": [{"added_p50_ms": a, "added_p99_ms": 5.0, "cpu_ms_per_call": 2.0} for a in p50],
    }
    return compare.Version(label, compare.ROOT, ModuleType("unused"), rows=rows)


def test_each_figure_is_the_median_of_the_rounds_with_the_change_against_the_first_version() -> None:
    before = version("before", [400, 300, 420], [3.0, 3.4, 2.9])
    after = version("after", [480, 470, 200], [2.5, 2.4, 2.6])
    rows = {row[0]: row[1:] for row in compare.table([before, after])}
    assert rows[""] == ("before", "after")
    # 400 -> 470 RPS: the one slow round of each version does not decide
    assert rows["P1 c64 direct, RPS"] == ("400.00 (300.00-420.00)", "470.00 (200.00-480.00) +18 %")
    assert rows["P3 added p50, ms"] == ("3.00 (2.90-3.40)", "2.50 (2.40-2.60) -17 %")
    assert "P2 streams/s" not in rows, "a scenario not run is not shown"


def test_a_revision_gets_a_worktree_and_a_directory_is_used_as_it_is() -> None:
    label, tree = compare.resolve(".")
    assert (label, tree) == ("working tree", compare.ROOT)
    label, tree = compare.resolve("HEAD")
    try:
        assert label.startswith("HEAD (") and (tree / "bench" / "run.py").exists()
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True, check=True)
        assert head.stdout.strip().startswith(tree.name)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=compare.ROOT, check=False)
    with pytest.raises(SystemExit, match="neither a tree nor a git revision"):
        compare.resolve("no-such-revision-anywhere")
