"""pytest fixtures of the test kit. Opt-in: a suite's top-level conftest.py says
`pytest_plugins = ["event_router.testing.fixtures"]` (only a conftest pytest reads before the session may)."""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

import anyio
import pytest

from event_router.api.hookspecs import ENTRY_POINT_GROUP
from event_router.app import App
from event_router.config import build_config
from event_router.plugin_loader import load_plugins
from event_router.testing import MakeApp


@pytest.fixture(autouse=True)
def reap_routers() -> Iterator[None]:
    """Kill any router subprocess a test started and did not stop (an assertion failed before it could)."""
    from event_router.testing import LIVE_ROUTERS

    yield
    for router in list(LIVE_ROUTERS):
        if router.proc is not None and router.proc.poll() is None:
            router.kill()
        router.close()


@pytest.fixture
def anyio_backend() -> str:
    """The router runs on asyncio (aiohttp, aio-pika): tests do too."""
    return "asyncio"


@pytest.fixture
def make_app(tmp_path: Path) -> MakeApp:
    """Run an App in-process from router.toml text: `async with make_app(text) as app: ...` (see `MakeApp`).

    The file is written to `tmp_path/router.toml`, so relative paths in it land in `tmp_path`.
    """

    @asynccontextmanager
    async def run(text: str, *, ready: bool = True, plugins: Sequence[ModuleType] = ()) -> AsyncIterator[App]:
        path = tmp_path / "router.toml"
        path.write_text(text)
        installed = {ep.value.partition(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)}
        registry = load_plugins(extra_plugins=[(m.__name__, m) for m in plugins if m.__name__ not in installed])
        app = App(build_config(tomllib.loads(text), path=path, registry=registry), registry)
        async with anyio.create_task_group() as tg:
            if ready:
                await tg.start(lambda task_status: app.run(handle_signals=False, task_status=task_status))
            else:
                tg.start_soon(lambda: app.run(handle_signals=False))
                await app.running.wait()
            try:
                yield app
            finally:
                app.request_stop()

    return run
