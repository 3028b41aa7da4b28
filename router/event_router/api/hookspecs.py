"""The pluggy hooks of the event router. Every hook name carries the `event_router_` prefix.

Hooks register classes, not behaviour: a plugin returns the `Input`/`Output` classes it provides, and
the core constructs them from router.toml. Built-in plugins implement these same hooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pluggy

from event_router.api.plugin import Input, Output

PROJECT = "event_router"
#: entry-point group third-party distributions register their plugin module under
ENTRY_POINT_GROUP = "event_router"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def event_router_input_types() -> Sequence[type[Input]]:  # type: ignore[empty-body]
    """Return the input classes this plugin provides.

    Called once when the plugin manager is built. Each class names its `type_name` (the `type = "..."`
    in an `[inputs.NAME]` table) and the JSON Schema of its table. Two classes with one `type_name`
    are an error naming both distributions.
    """


@hookspec
def event_router_output_types() -> Sequence[type[Output]]:  # type: ignore[empty-body]
    """Return the output classes this plugin provides (`type = "..."` of `[outputs.NAME]` tables).

    Called once when the plugin manager is built; same rules as `event_router_input_types`.
    """


@hookspec
def event_router_schema_dirs() -> Sequence[Path]:  # type: ignore[empty-body]
    """Return directories of event JSON Schemas (one `<trigger>.json` each) this plugin ships.

    Called when the schema registry is built. Later directories override earlier ones: the core's own
    schemas come first, then plugins', then the `[router] schemas_dir` of router.toml.
    """
