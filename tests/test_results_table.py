"""The README's results table states each measured figure as the page its row links to does:
one place holds each figure, and the table's copy is held to it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import PROJECT

FIGURE = re.compile(r"\d+\.\d+")  # a measured figure has decimals; counts (13, 300 of 300) are not checked
LINK = re.compile(r"\]\(([^)#]+)(?:#([^)]+))?\)")


def results_rows() -> list[list[str]]:
    """The cells of each row of the table under the README's "## Results"."""
    section = (PROJECT / "README.md").read_text().split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    assert rows[0] == ["exercise", "figure", "value", "how"] and rows[1][0] == "---"
    return rows[2:]


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def section_text(page: Path, name: str) -> str:
    """The section of a Markdown page under the heading whose anchor is ``name``, up to the
    next heading of the same or a higher level."""
    text = page.read_text()
    headings = list(re.finditer(r"^(#+) (.*)$", text, flags=re.M))
    start = next((h for h in headings if anchor(h.group(2)) == name), None)
    assert start, f"{page.relative_to(PROJECT)} has no heading #{name}"
    level = len(start.group(1))
    end = next((h.start() for h in headings if h.start() > start.start() and len(h.group(1)) <= level), len(text))
    return text[start.end() : end]


def json_numbers(node) -> list[float]:
    if isinstance(node, dict):
        return [x for value in node.values() for x in json_numbers(value)]
    return [float(node)] if isinstance(node, (int, float)) and not isinstance(node, bool) else []


def source_figures(path: str, name: str | None) -> list[float]:
    """The figures a link points at: a page's section (or whole page), or every number in a
    folder of metrics JSON files."""
    target = PROJECT / path
    if target.is_dir():
        return [x for file in sorted(target.glob("*.json")) for x in json_numbers(json.loads(file.read_text()))]
    text = section_text(target, name) if name else target.read_text()
    return [float(figure) for figure in FIGURE.findall(text)]


def test_each_figure_of_the_results_table_is_the_one_its_linked_page_states():
    rows = results_rows()
    assert len(rows) >= 7
    link = None
    for exercise, figure, value, how in rows:
        figures = FIGURE.findall(value)
        # A row's link, or the one of the row above for "same run" and "same".
        link = LINK.search(how).groups() if LINK.search(how) else link
        if not figures:
            continue
        assert link, f"README results, {exercise}: {figure}: no link to the page that states {value}"
        stated = source_figures(*link)
        for shown in figures:
            digits = len(shown.split(".")[1])
            assert any(round(x, digits) == float(shown) for x in stated), (
                f"README results, {exercise}: {figure}: {shown} is not in {'#'.join(filter(None, link))}"
            )
