from __future__ import annotations

import os
import socket
import sys
import tomllib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def require_service(name: str, host: str, port: int) -> None:
    """Skip when a broker is missing on a developer's machine; fail in CI, where .ci/run starts it."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        message = f"{name} is not reachable on {host}:{port} ({exc}); see README 'Running the tests'"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def make_app(tmp_path: Path) -> Callable[[str], object]:
    """Run an App in-process from a router.toml text: `async with make_app(text) as app: ...`."""

    from event_router.app import App
    from event_router.config import build_config
    from event_router.plugins import load_plugins

    @asynccontextmanager
    async def run(text: str) -> AsyncIterator[App]:
        path = tmp_path / "router.toml"
        path.write_text(text)
        config = build_config(tomllib.loads(text), path=path, registry=load_plugins())
        app = App(config, load_plugins())
        async with anyio.create_task_group() as tg:
            await tg.start(lambda task_status: app.run(handle_signals=False, task_status=task_status))
            try:
                yield app
            finally:
                app.request_stop()

    return run
