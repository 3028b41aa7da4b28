"""Process-wide settings the router runs with (event_router.runtime)."""

from __future__ import annotations

import gc
import tomllib
from pathlib import Path

import anyio
import pytest

from event_router.app import App
from event_router.config import build_config
from event_router.ops.cli import _serve
from event_router.plugin_loader import load_plugins
from event_router.testing import free_port

pytestmark = pytest.mark.anyio


async def test_serve_freezes_the_startup_heap_once_the_router_is_ready(tmp_path: Path) -> None:
    text = f"""
[inputs.hook]
type = "webhook"
listen = "127.0.0.1:{free_port()}"

[outputs.archive]
type = "file"
path = "out/events.jsonl"

[[routes]]
name = "all"
to = ["archive"]
"""
    path = tmp_path / "router.toml"
    path.write_text(text)
    registry = load_plugins()
    app = App(build_config(tomllib.loads(text), path=path, registry=registry), registry)
    gc.unfreeze()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_serve, app)
            with anyio.fail_after(15):
                while gc.get_freeze_count() == 0:
                    await anyio.sleep(0.01)
            # frozen only after start-up: the spool, the outputs and the inputs are among the frozen
            assert app.readiness()["ready"]
            app.request_stop()
    finally:
        gc.unfreeze()
