"""docs/plugins.md quotes the template plugin's code: every code block whose first line names a file of
plugins/_template (`# plugins/_template/...`) must stand in that file as it is, so the walk-through shows
code that runs and is tested (plugins/_template/tests). Every name of the plugin API has its line in the
reference table."""

from __future__ import annotations

import re

import event_router.api
from event_router.testing import ROOT

DOC = ROOT / "docs" / "plugins.md"
#: a row of the reference table: its first cell names one `event_router.api` name, maybe with its arguments
REFERENCE_ROW = re.compile(r"^\| `(\w+)[^`]*` \|", re.MULTILINE)
QUOTE = re.compile(r"```(?:python|toml)\n# (plugins/_template/\S+)\n(.*?)\n```", re.DOTALL)


def test_the_quoted_template_code_is_the_template_code() -> None:
    quotes = QUOTE.findall(DOC.read_text())
    files = {path for path, _ in quotes}
    assert {
        "plugins/_template/event_router_template/directory.py",
        "plugins/_template/event_router_template/__init__.py",
        "plugins/_template/pyproject.toml",
        "plugins/_template/tests/test_template_directory.py",
    } <= files, files
    stale = [(path, body.splitlines()[0]) for path, body in quotes if body not in (ROOT / path).read_text()]
    assert stale == [], f"docs/plugins.md quotes code the template no longer has: {stale}"


def test_the_walk_through_imports_only_the_plugin_api() -> None:
    """A plugin imports the router through `event_router.api` only (the test kit in its tests)."""
    imports = re.findall(r"^\s*(?:from|import) (event_router\S*)", DOC.read_text(), re.MULTILINE)
    assert imports, "docs/plugins.md shows no import"
    assert {name for name in imports if name not in ("event_router.api", "event_router.testing")} == set()


def test_every_name_of_the_plugin_api_has_its_line() -> None:
    """`event_router.api.__all__` is the contract: a name missing from the reference is one a plugin author
    cannot find; a row naming what `__all__` lacks promises what is not exported."""
    heading = "### Reference: every name in `event_router.api`"
    assert heading in DOC.read_text(), f"docs/plugins.md has no section {heading!r}"
    reference = DOC.read_text().split(heading, 1)[1].split("\n## ", 1)[0]
    rows = REFERENCE_ROW.findall(reference)
    assert len(rows) == len(set(rows)), f"a name has two rows: {sorted(rows)}"
    assert set(rows) == set(event_router.api.__all__)
