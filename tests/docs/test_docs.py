"""The README and the manual in docs/: every relative link resolves (the file, and the heading
an ``#anchor`` names), the README stays a newcomer's page, and the marked places the parameter
tables are generated into are there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_LINES = 260

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`[^`]*`")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(path: Path) -> list[str]:
    """The lines of ``path`` outside fenced code blocks."""
    out, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup and punctuation dropped, lower case, spaces to
    hyphens (``## `mlcore run housing` `` -> ``mlcore-run-housing``)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of ``path``, a repeated heading numbered as GitHub does (-1, -2)."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(path):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[str]:
    """The targets of the Markdown links of ``path`` (not in code, not images)."""
    return [
        target for line in prose_lines(path) for target in LINK.findall(INLINE_CODE.sub("", line))
    ]


def test_slug_is_githubs():
    assert slug("`mlcore run housing`") == "mlcore-run-housing"
    assert slug("Changing a dependency: `make lock`") == "changing-a-dependency-make-lock"
    assert slug("`bench/sweep.py`: sequential against Dask workers") == (
        "benchsweeppy-sequential-against-dask-workers"
    )
    assert slug("What `make` installs, and from where") == "what-make-installs-and-from-where"


def test_the_manual_has_pages():
    names = {p.name for p in DOCS}
    for page in ("install.md", "cli.md", "experiments.md", "tracking.md", "failures.md"):
        assert page in names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        assert dest.exists(), f"{page.name}: link to {target!r}: no file {dest}"
        assert REPO in dest.parents or dest == REPO, f"{page.name}: {target!r} leaves the repo"
        if anchor:
            assert dest.suffix == ".md", f"{page.name}: {target!r}: an anchor into a non-page"
            assert anchor in anchors(dest), (
                f"{page.name}: link to {target!r}: {dest.name} has no heading #{anchor}"
            )


def test_readme_is_short_and_links_every_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README)}
    missing = [p.name for p in DOCS if p.resolve() not in linked]
    assert not missing, f"README.md links no docs page {missing}"


def test_readme_names_the_test_command():
    """.ci/run runs the README's test command: the README says which one it is."""
    assert "`make test` is the test command" in README.read_text(encoding="utf-8")


@pytest.mark.parametrize("experiment", ["housing", "convnet", "gradcheck", "pipeline"])
def test_parameter_tables_are_marked(experiment):
    """docs/experiments.md holds each experiment's parameter table between the exact marker
    lines the table generator (flows.parameter_docs.render_docs) replaces, once each."""
    lines = (REPO / "docs" / "experiments.md").read_text(encoding="utf-8").splitlines()
    start, end = f"<!-- parameters:{experiment} -->", f"<!-- /parameters:{experiment} -->"
    assert lines.count(start) == 1 and lines.count(end) == 1
    body = lines[lines.index(start) + 1 : lines.index(end)]
    assert body and body[0].startswith("| parameter | `mlcore run` option | type |"), body[:1]
