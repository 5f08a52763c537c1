"""Every relative link and image in README.md resolves, anchors included.

The manual under docs/ is checked by ``mkdocs build --strict`` (``make docs``, part of
``make test``); README.md is outside MkDocs' reach, so it is checked here. The README is
rendered with Python-Markdown (MkDocs' own renderer), so links inside code blocks and
code spans are not mistaken for links.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import markdown
import pytest

ROOT = Path(__file__).resolve().parents[2]


class _Targets(HTMLParser):
    """Collects link targets (``<a href>``, ``<img src>``) and element ids of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"] or "")
        wanted = {"a": "href", "img": "src"}.get(tag)
        if wanted and values.get(wanted):
            self.targets.append(values[wanted] or "")


def _render(path: Path) -> _Targets:
    html = markdown.markdown(
        path.read_text(encoding="utf-8"),
        extensions=["fenced_code", "tables", "attr_list", "md_in_html", "toc"],
    )
    parser = _Targets()
    parser.feed(html)
    return parser


def _relative_targets(page: Path) -> list[str]:
    return [t for t in _render(page).targets if not urlsplit(t).scheme and not t.startswith("//")]


README_TARGETS = _relative_targets(ROOT / "README.md")


def test_the_readme_links_into_the_manual() -> None:
    # Guards the check itself: a README whose links stopped parsing would pass vacuously.
    assert len(README_TARGETS) >= 20
    assert "docs/index.md" in README_TARGETS
    assert any(t.endswith(".png") for t in README_TARGETS)


@pytest.mark.parametrize("target", sorted(set(README_TARGETS)))
def test_readme_link_resolves(target: str) -> None:
    parts = urlsplit(target)
    path = (ROOT / unquote(parts.path)).resolve() if parts.path else ROOT / "README.md"
    assert path.is_relative_to(ROOT), f"{target} points outside the repository"
    assert path.exists(), f"README.md links to {target}, which does not exist"
    if parts.fragment and path.suffix == ".md":
        assert parts.fragment in _render(path).ids, f"{path.relative_to(ROOT)} has no heading #{parts.fragment}"
