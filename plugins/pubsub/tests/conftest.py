"""A real Pub/Sub emulator for the plugin's tests, started once per session and stopped with its java child.

The emulator comes with the Google Cloud CLI (see event_router_pubsub.testing.INSTALL_HINT). The tests start
it themselves: nothing has to run beforehand.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from event_router.testing import IN_CI
from event_router.testing import until as kit_until
from event_router_pubsub.testing import PROJECT, EmulatorUnavailable, PubSubAdmin, running_emulator

#: the test kit's fixtures, opted into (docs/plugins.md, "Testing a plugin")
pytest_plugins = ["event_router.testing.fixtures"]

#: seconds from starting `gcloud beta emulators pubsub start` until it answers HTTP, for the summary
_startup: list[float] = []


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a Pub/Sub emulator running for this test session."""
    log = tmp_path_factory.mktemp("pubsub-emulator") / "emulator.log"
    started = time.monotonic()
    try:
        with running_emulator(log) as host:
            _startup.append(time.monotonic() - started)
            yield host
    except EmulatorUnavailable as exc:  # raised while starting, never from the tests using it
        if IN_CI or exc.installed:
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for seconds in _startup:
        terminalreporter.write_line(f"pubsub emulator: answered {seconds:.1f} s after start")


@pytest.fixture
def until() -> Callable[..., Awaitable[Any]]:
    """`await until(check, within, what)`: poll `check` on the event loop (it may read the spool, whose
    sqlite connection belongs to the loop's thread) until it returns something truthy, which is returned.
    """

    async def wait(check: Callable[[], Any], within: float = 30, what: str = "condition") -> Any:
        return await kit_until(check, what, within=within, interval=0.1)

    return wait


@pytest.fixture
def pubsub(pubsub_emulator: str) -> PubSubAdmin:
    return PubSubAdmin(pubsub_emulator)


@pytest.fixture
def router_toml(tmp_path: Path, pubsub_emulator: str) -> Callable[..., str]:
    """router.toml text: a pubsub input `connector` on `subscription` -> a file output (out/events.jsonl)."""

    def build(subscription: str, *, input_extra: str = "", router_extra: str = "", emulator: bool = True) -> str:
        emulator_line = f'emulator_host = "{pubsub_emulator}"' if emulator else ""
        return f"""
[router]
data_dir = "{tmp_path}/var"
unmatched = "dead-letter"
{router_extra}
[inputs.connector]
type = "pubsub"
project = "{PROJECT}"
subscription = "{subscription}"
ack_deadline = "10s"
{emulator_line}
{input_extra}
[outputs.archive]
type = "file"
path = "{tmp_path}/out/events.jsonl"
[[routes]]
name = "all"
match = {{ trigger = ["transport.**", "consumption.**", "runtime.**"] }}
to = ["archive"]
"""

    return build
