"""docs/plugins.md quotes the template plugin's code: every code block whose first line names a file of
plugins/_template (`# plugins/_template/...`) must stand in that file as it is, so the walk-through shows
code that runs and is tested (plugins/_template/tests)."""

from __future__ import annotations

import re

from event_router.testing import ROOT

DOC = ROOT / "docs" / "plugins.md"
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
