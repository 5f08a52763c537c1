"""Code that cites the architecture names a section that exists in docs/architecture.md.

Comments cite it as ``(docs/architecture.md, "Worker model")``. The notes used to live
outside the repository (``../shared/ARCHITECTURE.md``), which left every clone with
dangling references; this keeps the new ones honest when a section is renamed.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("config", "tenants", "billing", "proxy", "docker", "nginx", "bench", "tests")
CITATION = re.compile(r'docs/architecture\.md, "([^"]+)"')


def _sources() -> list[Path]:
    return [p for package in PACKAGES for p in (ROOT / package).rglob("*.py") if "migrations" not in p.parts]


def _sections() -> set[str]:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    return {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("## ")}


def test_every_citation_names_a_section() -> None:
    sections = _sections()
    cited = {
        (path.relative_to(ROOT).as_posix(), name)
        for path in _sources()
        if path != Path(__file__)
        for name in CITATION.findall(path.read_text(encoding="utf-8"))
    }
    assert len(cited) >= 5, "the code's citations were not found: did the citation format change?"
    missing = sorted(f"{path}: {name!r}" for path, name in cited if name not in sections)
    assert not missing, f"cited sections not in docs/architecture.md: {missing}"


def test_nothing_points_outside_the_repository_for_the_architecture() -> None:
    stale = [
        path.relative_to(ROOT).as_posix()
        for path in [*_sources(), ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
        if path != Path(__file__) and "ARCHITECTURE.md" in path.read_text(encoding="utf-8")
    ]
    assert not stale, f"these still cite ARCHITECTURE.md, which is not in the repository: {stale}"
