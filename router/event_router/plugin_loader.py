"""Finding plugins: one pluggy manager, built-ins and third parties through the same door."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from event_router.api import hookspecs
from event_router.api.errors import RouterError
from event_router.api.plugin import Input, Output
from event_router.core.validation import metaschema_error

#: built-in plugin modules, registered after the entry-point plugins exactly like them
DEFAULT_PLUGINS: tuple[str, ...] = (
    "event_router.inputs.webhook",
    "event_router.inputs.recovery",
    "event_router.outputs.file",
    "event_router.outputs.http",
    "event_router.outputs.connector",
)
#: comma-separated plugin names to skip (entry-point names or built-in names like `builtin.webhook`)
DISABLE_ENV = "EVENT_ROUTER_DISABLE_PLUGINS"


class PluginLoadError(RouterError):
    """A plugin could not be loaded, or two plugins claim the same type."""


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """What `event-router plugins` shows for one registered plugin."""

    name: str
    distribution: str
    version: str
    builtin: bool
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    hooks: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "hooks": list(self.hooks),
        }


@dataclass(slots=True)
class PluginRegistry:
    """Every input/output class and schema directory the installed plugins provide."""

    inputs: dict[str, type[Input]] = field(default_factory=dict)
    outputs: dict[str, type[Output]] = field(default_factory=dict)
    schema_dirs: list[Path] = field(default_factory=list)
    plugins: list[PluginInfo] = field(default_factory=list)
    #: type name -> plugin name, for messages
    provided_by: dict[str, str] = field(default_factory=dict)


def make_plugin_manager(
    *, entry_points: bool = True, extra_plugins: Iterable[tuple[str, object]] = ()
) -> pluggy.PluginManager:
    """A fresh manager (never a global, so each test gets its own) with every enabled plugin registered:
    the entry-point plugins, then the built-ins, then `extra_plugins`. Names in `$EVENT_ROUTER_DISABLE_PLUGINS`
    are blocked: neither imported nor registered."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in os.environ.get(DISABLE_ENV, "").split(","):
        if name.strip():
            pm.set_blocked(name.strip())
    if entry_points:
        try:
            pm.load_setuptools_entrypoints(hookspecs.ENTRY_POINT_GROUP)
        except Exception as exc:  # a broken third-party package must say which one it is
            raise PluginLoadError(f"{_failed_entry_point(pm)} failed to import: {exc}") from exc
    for module_name in DEFAULT_PLUGINS:
        name = _builtin_name(module_name)
        if not pm.is_blocked(name):
            pm.register(importlib.import_module(module_name), name=name)
    for name, plugin in extra_plugins:
        pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(f"plugin {exc.plugin!r} implements an unknown hook: {exc}") from exc
    return pm


def _failed_entry_point(pm: pluggy.PluginManager) -> str:
    """Which entry point `pm.load_setuptools_entrypoints` stopped at: the first of the group it had neither
    registered nor skipped as blocked (pluggy and `entry_points()` go through the distributions in one order)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=hookspecs.ENTRY_POINT_GROUP):
        if not pm.has_plugin(ep.name) and not pm.is_blocked(ep.name):
            return f"plugin {ep.name!r} from {ep.dist.name if ep.dist else '?'}"
    return "a plugin"


def _builtin_name(module_name: str) -> str:
    return "builtin." + module_name.rsplit(".", 1)[1]


def collect(pm: pluggy.PluginManager) -> PluginRegistry:
    """Ask every plugin for its classes and schema dirs; refuse duplicates and bad config schemas.

    Entry-point plugins come first, by name (pluggy loads them in the order of the distributions on
    `sys.path`), then the built-ins and extras in the order they were registered: `event-router plugins`
    lists them so, and a type provided twice names them so.
    """
    registry = PluginRegistry()
    dists = {pm.get_name(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    registered = [(name, plugin) for name, plugin in pm.list_name_plugin() if plugin is not None]
    ordered = sorted(((n, p) for n, p in registered if n in dists), key=lambda item: item[0])
    ordered += [(n, p) for n, p in registered if n not in dists]
    inputs = _by_plugin(pm.hook.event_router_input_types)
    outputs = _by_plugin(pm.hook.event_router_output_types)
    schema_dirs = _by_plugin(pm.hook.event_router_schema_dirs)
    for name, plugin in ordered:
        builtin = name.startswith("builtin.")
        dist_name, version = _dist_of(dists.get(name), builtin)
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or ()))
        ins, outs = inputs.get(name, ()), outputs.get(name, ())
        for kind, classes, table in (("input", ins, registry.inputs), ("output", outs, registry.outputs)):
            for cls in classes:
                _check_class(cls, kind, name)
                key = f"{kind}:{cls.type_name}"
                if cls.type_name in table:
                    raise PluginLoadError(
                        f"{kind} type {cls.type_name!r} is provided twice: by {registry.provided_by[key]}"
                        f" and by {name} ({dist_name})"
                    )
                table[cls.type_name] = cls
                registry.provided_by[key] = f"{name} ({dist_name})"
        registry.schema_dirs.extend(Path(p) for p in schema_dirs.get(name, ()))
        registry.plugins.append(
            PluginInfo(
                name=name,
                distribution=dist_name,
                version=version,
                builtin=builtin,
                inputs=tuple(c.type_name for c in ins),
                outputs=tuple(c.type_name for c in outs),
                hooks=hooks,
            )
        )
    return registry


def load_plugins(*, entry_points: bool = True, extra_plugins: Iterable[tuple[str, object]] = ()) -> PluginRegistry:
    """Build a manager and collect what its plugins provide: what the CLI and the daemon use."""
    return collect(make_plugin_manager(entry_points=entry_points, extra_plugins=extra_plugins))


def _by_plugin(hook: pluggy.HookCaller) -> dict[str, tuple[Any, ...]]:
    """What each plugin's implementation of `hook` returns, by plugin name. Calling `hook()` would give every
    answer in one list without saying whose it is, and each type must be told apart by its plugin (the
    listing, the duplicate-type error). The hooks take no argument and have no wrappers."""
    answers: dict[str, tuple[Any, ...]] = {}
    for impl in hook.get_hookimpls():
        answer: Any = impl.function()
        answers[impl.plugin_name] = tuple(answer or ())
    return answers


def _check_class(cls: Any, kind: str, plugin_name: str) -> None:
    base = Input if kind == "input" else Output
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginLoadError(
            f"plugin {plugin_name}: {cls!r} is not a subclass of event_router.api.plugin.{base.__name__}"
        )
    if not getattr(cls, "type_name", None):
        raise PluginLoadError(f"plugin {plugin_name}: {cls.__name__} has no type_name")
    problem = metaschema_error(cls.config_schema)
    if problem is not None:
        raise PluginLoadError(
            f"plugin {plugin_name}: config_schema of {kind} {cls.type_name!r} is not a valid JSON Schema: {problem[1]}"
        )


def _dist_of(dist: Any, builtin: bool) -> tuple[str, str]:
    if dist is not None:
        return str(dist.metadata["Name"]), str(dist.version)
    if builtin:
        from event_router import __version__

        return "enmeshed-event-router", __version__
    return "(not installed)", "?"
