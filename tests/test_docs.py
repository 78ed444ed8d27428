"""The documentation holds together: README.md is a front page, and every relative link of README.md and docs/
reaches a file that exists (and a heading that exists, for links with a #fragment)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(`{3,})")


def prose_lines(page: Path) -> list[str]:
    """The lines of ``page`` outside fenced code blocks."""
    lines, fence = [], None
    for line in page.read_text(encoding="utf-8").splitlines():
        match = FENCE.match(line)
        if match and (fence is None or match.group(1).startswith(fence)):
            fence = None if fence else match.group(1)
            continue
        if fence is None:
            lines.append(line)
    return lines


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of the headings of ``page``: lower case, punctuation dropped, spaces to hyphens."""
    headings = [line.lstrip("#").strip() for line in prose_lines(page) if re.match(r"#{1,6} ", line)]
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def links(page: Path) -> list[str]:
    return [target for line in prose_lines(page) for target in LINK.findall(line)
            if not re.match(r"[a-z]+:", target)]


def test_anchor_rule():
    page = ROOT / "docs" / "benchmark.md"
    assert "speed-and-memory-hf_tsv-vs-fusionbench-tsv-m" in anchors(page)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            broken.append(target)
    assert broken == [], f"{page.name}: links to missing files or headings"


def test_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    assert "bash dev.sh example" in readme and "bash dev.sh test" in readme
    for page in PAGES[1:]:  # every page of docs/ is reachable from it
        assert f"(docs/{page.name})" in readme, page.name
