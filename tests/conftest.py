"""Fixtures shared by the core's tests (the test kit's own are in event_router.testing)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from types import ModuleType

import pytest

from event_router.app import App
from event_router.testing import MakeApp

#: the test kit's fixtures (`make_app`, `anyio_backend`, and the autouse `reap_routers`): opted into here, in
#: a conftest.py pytest reads before the session (a testpath of its own), as any plugin's suite does
pytest_plugins = ["event_router.testing.fixtures"]


@pytest.fixture(params=[0, 1], ids=["in-process", "front-process"])
def webhook_modes(request: pytest.FixtureRequest, make_app: MakeApp) -> MakeApp:
    """`make_app` that runs each webhook input both ways: HTTP in the router process (processes = 0) and in
    a front process (processes = 1). A test module opts in with `make_app = webhook_modes`... by requesting
    this fixture under the name `make_app` (see test_webhook.py)."""
    processes = request.param

    def run(text: str, *, ready: bool = True, plugins: Sequence[ModuleType] = ()) -> AbstractAsyncContextManager[App]:
        text = text.replace('type = "webhook"', f'type = "webhook"\nprocesses = {processes}')
        return make_app(text, ready=ready, plugins=plugins)

    return run
