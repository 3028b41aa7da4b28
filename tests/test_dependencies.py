"""Every distribution declares what its package imports.

An installed router has only what the distributions declare: a library that comes into this checkout's
`.venv` through another distribution (a plugin, a dev tool) is missing from a production install, and the
import fails there, for a lazily imported module only when that code first runs. So each import in each
package, at module level or inside a function, must name a distribution that package requires itself.
tests/test_install.py proves the same on fresh installs; this finds the culprit in milliseconds.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import distribution, packages_distributions
from pathlib import Path
from typing import Any

import pytest

from event_router.testing import ROOT

#: the core's test kit, imported by plugins' test suites, never by a running router: it may use the
#: `testing` extra, which a test suite installs (`enmeshed-event-router[testing]`)
TEST_KIT = "event_router/testing/"
#: modules of the core a router imports only when its config asks for them: each may use its extra, which
#: a user installs for it (`enmeshed-event-router[postgresql]`); tests/test_install.py imports everything
#: else without it
EXTRA_MODULES = {
    "event_router/core/spool/postgresql.py": "postgresql",
    "event_router/core/telemetry.py": "otel",
}

PYPROJECTS = [ROOT / "pyproject.toml", *sorted((ROOT / "plugins").glob("*/pyproject.toml"))]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return normalise(match.group())


def project(pyproject: Path) -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads(pyproject.read_text())
    return data


def package_dirs(pyproject: Path) -> list[Path]:
    """The package directories the distribution's wheel carries."""
    packages = project(pyproject)["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    return [pyproject.parent / p for p in packages]


@cache
def first_party() -> dict[str, str]:
    """This repository's import names -> the distribution that carries each."""
    return {
        path.name: normalise(project(pyproject)["project"]["name"])
        for pyproject in PYPROJECTS
        for path in package_dirs(pyproject)
    }


def provider(module: str) -> str:
    """The distribution that installs `module` (a dotted import name) in this environment."""
    top = module.partition(".")[0]
    if top in first_party():
        return first_party()[top]
    candidates = packages_distributions().get(top, [])
    assert candidates, f"no installed distribution provides {module!r}"
    if len(set(candidates)) == 1:
        return normalise(candidates[0])
    # a namespace package several distributions share (gcloud.aio.*): the one whose files hold the module
    parts = module.split(".")
    for depth in range(len(parts), 0, -1):
        stem = "/".join(parts[:depth])
        holders = {
            normalise(name)
            for name in candidates
            if any(str(f) == f"{stem}.py" or str(f).startswith(f"{stem}/") for f in distribution(name).files or [])
        }
        if len(holders) == 1:
            return holders.pop()
    raise AssertionError(f"{module!r} is provided by several distributions: {candidates}")


def imports(package: Path) -> dict[str, list[str]]:
    """Every absolute import of a third-party or first-party module in `package` -> where it happens."""
    found: dict[str, list[str]] = {}
    for source in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                if name.partition(".")[0] not in sys.stdlib_module_names:
                    where = f"{source.relative_to(package.parent).as_posix()}:{node.lineno}"
                    found.setdefault(name, []).append(where)
    return found


@pytest.mark.parametrize("pyproject", PYPROJECTS, ids=lambda p: p.parent.name if p.parent != ROOT else "core")
def test_every_import_is_a_declared_dependency(pyproject: Path) -> None:
    meta = project(pyproject)["project"]
    own = normalise(meta["name"])
    required = {requirement_name(r) for r in meta.get("dependencies", [])}
    extras = {
        name: {requirement_name(r) for r in requirements}
        for name, requirements in meta.get("optional-dependencies", {}).items()
    }
    testing = extras.get("testing", set())
    undeclared: list[str] = []
    scanned = 0
    for package in package_dirs(pyproject):
        for module, places in sorted(imports(package).items()):
            scanned += 1
            needed = provider(module)
            runtime = [p for p in places if not p.startswith(TEST_KIT)]
            # an import in a module of an extra may use that extra, and only that one
            of_extra = {EXTRA_MODULES.get(p.rpartition(":")[0]) for p in runtime}
            if runtime and len(of_extra) == 1 and None not in of_extra:
                allowed = required | extras[str(of_extra.pop())]
            else:
                allowed = required if runtime else required | testing
            if needed != own and needed not in allowed:
                undeclared.append(f"{needed} (import {module}: {', '.join((runtime or places)[:3])})")
    assert scanned, f"{pyproject}: no imports found, the scan looked in the wrong place"
    assert not undeclared, f"{meta['name']} imports what it does not declare:\n  " + "\n  ".join(undeclared)


def test_the_scan_sees_imports_inside_functions() -> None:
    """The control: a lazily imported client (the router loads broker clients only when an input runs) is
    found, and its namespace package resolves to the one distribution that holds it."""
    found = imports(ROOT / "plugins" / "pubsub" / "event_router_pubsub")
    assert "gcloud.aio.pubsub" in found
    assert provider("gcloud.aio.pubsub") == "gcloud-aio-pubsub"
    lazy = imports(ROOT / "router" / "event_router")["uvloop"]
    assert any(p.startswith("event_router/runtime.py:") for p in lazy), lazy
