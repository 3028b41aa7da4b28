"""The import rules of the layout (README.md, "Layout"), read from the source with `ast`: every import
counts, also one inside a function (lazy) or under `if TYPE_CHECKING:`, since each is a dependency.

- no import cycle among the router's modules and the plugin packages;
- `core/` imports none of what is built on it: config/, app, admin, ops/, inputs/, outputs/, web/, the
  plugin loader;
- `api/` (the plugin contract) imports nothing of the router outside `api/`;
- a plugin package (plugins/*/event_router_*) imports nothing of the router but `event_router.api`; its
  `testing.py` (the helpers its tests and other projects' tests use) may import `event_router.testing`;
- the spool's backend is chosen in one place (`event_router.core.spool.backend`): nothing outside
  core/spool imports a backend module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROUTER = ROOT / "router" / "event_router"
PLUGIN_PACKAGES = sorted((ROOT / "plugins").glob("*/event_router_*"))

#: the spool's backend modules: only core/spool (its `backend` module) picks one
SPOOL_BACKENDS = ("event_router.core.spool.sqlite", "event_router.core.spool.postgresql")
#: what core/ builds on neither directly nor lazily: each of these imports the core
ABOVE_CORE = (
    "config",
    "app",
    "admin",
    "ops",
    "inputs",
    "outputs",
    "web",
    "plugin_loader",
)


def find_modules(packages: Iterable[Path]) -> dict[str, Path]:
    """Dotted module name -> file, for every module of these package directories."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted(package.rglob("*.py")):
            parts = path.relative_to(package.parent).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: Mapping[str, Path]) -> set[str]:
    """The modules among `known` that module `name` imports anywhere in its file. `from a import b` counts
    as importing `a.b` where that is a module, else `a`; a parent package is not counted (its __init__ runs
    before any of its modules, whoever imports them); a name not among `known` (the standard library, a
    dependency) is left out."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from package import submodule` depends on the submodule; the package's __init__ runs first
            # whatever is imported from it, as for `import package.submodule`: neither counts it
            submodules = [f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in known]
            other_names = len(submodules) < len(node.names)
            candidates = [*submodules, *([module] if other_names else [])]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for candidate in candidates:
            found = candidate
            while found and found not in known:
                found = found.rpartition(".")[0]
            if found and found != name:
                targets.add(found)
    return targets


def import_graph(packages: Iterable[Path]) -> dict[str, set[str]]:
    known = find_modules(packages)
    return {name: imports_of(name, path, known) for name, path in known.items()}


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules, the first one again at the end), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for target in sorted(graph[module]):
            cycle = visit(target, [*path, module])
            if cycle is not None:
                return cycle
        done.add(module)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle is not None:
            return cycle
    return None


def is_within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layout_violations(graph: Mapping[str, set[str]]) -> list[str]:
    """Every import that breaks the rules of the module docstring, as "importer -> imported: rule"."""
    problems: list[str] = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if target in SPOOL_BACKENDS and not is_within(module, "event_router.core.spool"):
                problems.append(f"{module} -> {target}: the spool backend is chosen in core.spool.backend")
            if is_within(module, "event_router.core"):
                above = [part for part in ABOVE_CORE if is_within(target, f"event_router.{part}")]
                if above:
                    problems.append(f"{module} -> {target}: core/ imports nothing built on it")
            elif is_within(module, "event_router.api"):
                if is_within(target, "event_router") and not is_within(target, "event_router.api"):
                    problems.append(f"{module} -> {target}: api/ imports nothing of the router outside api/")
            elif not is_within(module, "event_router") and is_within(target, "event_router"):
                testing_helper = module.endswith(".testing") and is_within(target, "event_router.testing")
                if target != "event_router.api" and not testing_helper:
                    problems.append(f"{module} -> {target}: a plugin package imports only event_router.api")
    return problems


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    assert PLUGIN_PACKAGES, "no plugin package found under plugins/"
    return import_graph([ROUTER, *PLUGIN_PACKAGES])


def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_core_api_and_plugins_import_only_what_they_build_on(graph: dict[str, set[str]]) -> None:
    assert layout_violations(graph) == []


def test_the_checks_see_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    """Control for the two tests above: in a made-up tree, a cycle closed by a lazy import and rule breaks
    hidden in a function and under TYPE_CHECKING are caught; what the rules allow is not reported."""
    files = {
        "event_router/__init__.py": "",
        "event_router/app.py": "from event_router.core import plan\n",
        "event_router/core/__init__.py": "",
        "event_router/core/plan.py": "def later():\n    from event_router.app import run\n",
        "event_router/api/__init__.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from event_router.core import plan\n"
        ),
        "event_router/core/spool/__init__.py": "",
        "event_router/core/spool/sqlite.py": "from event_router.core.spool import OpenMode\n",
        "event_router/core/spool/backend.py": "from event_router.core.spool.sqlite import SQLiteSpool\n",
        "event_router/testing.py": "def dead_letters():\n    from event_router.core.spool.sqlite import SQLiteSpool\n",
        "event_router_x/__init__.py": "from event_router.api import Input\nfrom . import testing\n",
        "event_router_x/testing.py": "from event_router.testing import until\n",
        "event_router_x/input.py": "def f():\n    import event_router.core.plan\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph([tmp_path / "event_router", tmp_path / "event_router_x"])
    assert find_cycle(graph) == ["event_router.core.plan", "event_router.app", "event_router.core.plan"]
    assert layout_violations(graph) == [
        "event_router.api -> event_router.core.plan: api/ imports nothing of the router outside api/",
        "event_router.core.plan -> event_router.app: core/ imports nothing built on it",
        "event_router.testing -> event_router.core.spool.sqlite: the spool backend is chosen in core.spool.backend",
        "event_router_x.input -> event_router.core.plan: a plugin package imports only event_router.api",
    ]
