"""Finding plugins (event_router.plugin_loader): third-party distributions through their entry points, next to the
built-ins. Each test puts made-up distributions on `sys.path` (a `.dist-info` with `entry_points.txt`), which
`importlib.metadata` finds as it finds installed ones; tests/test_install.py does the same with real wheels in
fresh venvs, slower."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from event_router.plugin_loader import DISABLE_ENV, PluginLoadError, load_plugins

PLUGIN_MODULE = """
from event_router.api import Input, hookimpl


class {cls}(Input):
    type_name = "{type_name}"
    config_schema = {{"type": "object"}}

    async def run(self, sink, *, task_status):
        task_status.started()


@hookimpl
def event_router_input_types():
    return [{cls}]
"""

Install = Callable[..., None]


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Install]:
    """install(entry_point, distribution, source): a distribution whose entry point `entry_point` is a module
    holding `source`."""
    modules: list[str] = []
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(entry_point: str, distribution: str, source: str, *, version: str = "1.2.3") -> None:
        module = f"fake_plugin_{entry_point}_{len(modules)}"
        modules.append(module)
        (tmp_path / f"{module}.py").write_text(source)
        info = tmp_path / f"{distribution.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[event_router]\n{entry_point} = {module}\n")

    yield install
    for module in modules:
        sys.modules.pop(module, None)


def fake_input(cls: str, type_name: str) -> str:
    return PLUGIN_MODULE.format(cls=cls, type_name=type_name)


def test_an_entry_point_plugin_is_listed_with_its_distribution(install: Install) -> None:
    """Control (passes before and after the plugin loader moved onto pluggy's entry-point loading): `event-router
    plugins` and `--version` show the distribution and version of each plugin, its types, and the
    entry-point plugins first, by name, then the built-ins."""
    install("zeta", "event-router-zeta", fake_input("Zeta", "zeta"), version="0.9")
    install("alpha", "event-router-alpha", fake_input("Alpha", "alpha"))
    registry = load_plugins()
    names = [p.name for p in registry.plugins]
    entry_points = [name for name in names if not name.startswith("builtin.")]
    assert names[: len(entry_points)] == sorted(entry_points), names
    assert {"alpha", "zeta"} <= set(entry_points)
    alpha, zeta = (next(p for p in registry.plugins if p.name == name) for name in ("alpha", "zeta"))
    assert (alpha.distribution, alpha.version, alpha.builtin, alpha.inputs) == (
        "event-router-alpha",
        "1.2.3",
        False,
        ("alpha",),
    )
    assert (zeta.distribution, zeta.version) == ("event-router-zeta", "0.9")
    assert zeta.hooks == ("event_router_input_types",)
    assert registry.inputs["zeta"].__name__ == "Zeta"
    assert registry.provided_by["input:zeta"] == "zeta (event-router-zeta)"


def test_a_plugin_that_fails_to_import_is_named(install: Install) -> None:
    """Control: a broken third-party package says which one it is."""
    install("fine", "event-router-fine", fake_input("Fine", "fine"))
    install("broken", "event-router-broken", "raise ImportError('no module named grpc')\n")
    with pytest.raises(PluginLoadError) as caught:
        load_plugins()
    assert str(caught.value) == "plugin 'broken' from event-router-broken failed to import: no module named grpc"


def test_a_disabled_plugin_is_not_even_imported(install: Install, monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: EVENT_ROUTER_DISABLE_PLUGINS skips an entry point before importing it (the way around a broken
    one), and a built-in by its name."""
    install("broken", "event-router-broken", "raise ImportError('no module named grpc')\n")
    install("fine", "event-router-fine", fake_input("Fine", "fine"))
    monkeypatch.setenv(DISABLE_ENV, " broken,builtin.http ")
    registry = load_plugins()
    names = {p.name for p in registry.plugins}
    assert "fine" in names and "builtin.webhook" in names
    assert "broken" not in names and "builtin.http" not in names
    assert "http" not in registry.outputs


def test_two_plugins_with_one_type_are_both_named(install: Install) -> None:
    """Control: a type provided twice names both providers, the entry point's distribution included."""
    install("mine", "event-router-mine", fake_input("Mine", "webhook"))
    with pytest.raises(PluginLoadError) as caught:
        load_plugins()
    assert str(caught.value) == (
        "input type 'webhook' is provided twice: by mine (event-router-mine) and by builtin.webhook "
        "(enmeshed-event-router)"
    )


def test_a_plugin_whose_config_schema_is_not_a_json_schema_is_refused(install: Install) -> None:
    """A config_schema that breaks the metaschema is refused at start-up, with jsonschema's words for why."""
    install("bad", "event-router-bad", fake_input("Bad", "bad").replace('{"type": "object"}', '{"type": "nope"}'))
    with pytest.raises(PluginLoadError) as caught:
        load_plugins()
    assert str(caught.value).startswith(
        "plugin bad: config_schema of input 'bad' is not a valid JSON Schema: 'nope' is not valid under any of"
    ), str(caught.value)


def test_a_plugin_implementing_an_unknown_hook_is_refused(install: Install) -> None:
    """Control: a misspelt hook is an error at start-up, not a type silently missing."""
    install(
        "typo",
        "event-router-typo",
        "from event_router.api import hookimpl\n\n\n@hookimpl\ndef event_router_input_type():\n    return []\n",
    )
    with pytest.raises(PluginLoadError, match="implements an unknown hook"):
        load_plugins()
