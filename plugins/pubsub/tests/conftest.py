"""A real Pub/Sub emulator for the plugin's tests, started once per session and stopped with its java child.

The emulator comes with the Google Cloud CLI (Debian: google-cloud-cli, google-cloud-cli-pubsub-emulator
and a Java runtime). The tests start it themselves: nothing has to run beforehand.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from gcloud.aio.pubsub import PublisherClient, PubsubMessage, SubscriberClient

from event_router.testing import IN_CI, free_port
from event_router.testing import until as kit_until

PROJECT = "test-project"
INSTALL_HINT = (
    "the Pub/Sub emulator needs the Google Cloud CLI: on Debian/Ubuntu install the packages google-cloud-cli "
    "and google-cloud-cli-pubsub-emulator (Google's apt repository) and a Java runtime (default-jre-headless)"
)
#: seconds from starting `gcloud beta emulators pubsub start` until it answers HTTP, for the summary
_startup: list[float] = []


def _answers(host: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """TERM, then KILL, the emulator's whole process group: gcloud forks java, which outlives a lone kill."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                try:
                    os.killpg(proc.pid, 0)  # any member (java) still alive?
                except ProcessLookupError:
                    return
            time.sleep(0.1)
    proc.wait(10)


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a Pub/Sub emulator running for this test session."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        message = f"gcloud not found: {INSTALL_HINT}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    host = f"127.0.0.1:{free_port()}"
    log = tmp_path_factory.mktemp("pubsub-emulator") / "emulator.log"
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [gcloud, "beta", "emulators", "pubsub", "start", f"--host-port={host}", f"--project={PROJECT}"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown reaches the java it forks
        )
    try:
        deadline = started + 60
        while not _answers(host):
            if proc.poll() is not None or time.monotonic() > deadline:
                state = f"exited with {proc.returncode}" if proc.poll() is not None else "no answer after 60 s"
                pytest.fail(f"Pub/Sub emulator on {host}: {state}; {INSTALL_HINT}\n{log.read_text(errors='replace')}")
            time.sleep(0.1)
        _startup.append(time.monotonic() - started)
        yield host
    finally:
        _stop_group(proc)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for seconds in _startup:
        terminalreporter.write_line(f"pubsub emulator: answered {seconds:.1f} s after start")


class PubSubAdmin:
    """The emulator as an operator and the Connector use it: create topics and subscriptions, publish."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.api_root = f"http://{host}/v1"

    @staticmethod
    def unique(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    def _publisher(self) -> PublisherClient:
        return PublisherClient(api_root=self.api_root, api_is_dev=True)

    async def create_topic(self) -> str:
        topic = PublisherClient.topic_path(PROJECT, self.unique("topic"))
        async with self._publisher() as client:
            await client.create_topic(topic)
        return topic

    def subscriber(self) -> SubscriberClient:
        return SubscriberClient(api_root=self.api_root, api_is_dev=True)

    async def create_subscription(self, topic: str, ack_deadline: int = 10, name: str | None = None) -> str:
        subscription = SubscriberClient.subscription_path(PROJECT, name or self.unique("sub"))
        async with self.subscriber() as client:
            await client.create_subscription(subscription, topic, {"ackDeadlineSeconds": ack_deadline})
        return subscription

    async def publish(self, topic: str, events: list[dict[str, Any]]) -> list[str]:
        """Publish like the Connector: data = the JSON of the event's data, one attribute `namespace`."""
        messages = [PubsubMessage(orjson.dumps(e.get("data", {})), namespace=e["trigger"]) for e in events]
        return await self.publish_raw(topic, messages)

    async def publish_raw(self, topic: str, messages: list[PubsubMessage]) -> list[str]:
        async with self._publisher() as client:
            result = await client.publish(topic, messages)
        ids: list[str] = result["messageIds"]
        return ids

    async def pull_now(self, subscription: str) -> list[dict[str, Any]]:
        """What the subscription would hand out right now (returnImmediately: leaves no pull waiting)."""
        async with self.subscriber() as client:
            response = await client.session.post(
                f"{self.api_root}/{subscription}:pull",
                headers={"Content-Type": "application/json"},
                data=orjson.dumps({"maxMessages": 1000, "returnImmediately": True}),
                timeout=10,
            )
            received: list[dict[str, Any]] = (await response.json()).get("receivedMessages", [])
        return received

    async def nack(self, subscription: str, ack_ids: list[str]) -> None:
        """Hand leased messages back at once (ack deadline 0)."""
        async with self.subscriber() as client:
            await client.modify_ack_deadline(subscription, ack_ids, 0)


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
