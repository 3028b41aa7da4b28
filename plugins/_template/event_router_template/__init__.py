"""Example plugin for enmeshed-event-router: an input that reads events from files dropped into a directory
(`directory`) and an output that prints deliveries to stdout (`stdout`).

Copy `plugins/_template` to start your own. A plugin is a module with functions marked `@hookimpl`
that return the classes it provides; the router constructs them from router.toml. The entry point in
pyproject.toml names this module.
"""

from __future__ import annotations

from event_router.api import Input, Output, hookimpl
from event_router_template.directory import DirectoryInput
from event_router_template.output import StdoutOutput

__all__ = ["DirectoryInput", "StdoutOutput"]


@hookimpl
def event_router_input_types() -> list[type[Input]]:
    return [DirectoryInput]


@hookimpl
def event_router_output_types() -> list[type[Output]]:
    return [StdoutOutput]
