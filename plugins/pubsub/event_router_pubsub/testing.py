"""Helpers of this plugin's tests and of the soak run: a real Pub/Sub emulator, and publishing as the Connector.

The emulator comes with the Google Cloud CLI (Debian: google-cloud-cli, google-cloud-cli-pubsub-emulator
and a Java runtime). `running_emulator()` starts one on a free loopback port and stops it, with the java
process gcloud forks, by its process group. `PubSubAdmin` creates topics and subscriptions as an operator
would and publishes the way the Connector's PubSub broker does. Used by plugins/pubsub/tests and bench/soak.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from gcloud.aio.pubsub import PublisherClient, PubsubMessage, SubscriberClient

from event_router.testing import free_port

PROJECT = "test-project"
INSTALL_HINT = (
    "the Pub/Sub emulator needs the Google Cloud CLI: on Debian/Ubuntu install the packages google-cloud-cli "
    "and google-cloud-cli-pubsub-emulator (Google's apt repository) and a Java runtime (default-jre-headless)"
)


class EmulatorUnavailable(RuntimeError):
    """gcloud is not installed (`installed` false), or the emulator did not answer in time; the message says how
    to fix it."""

    def __init__(self, message: str, *, installed: bool) -> None:
        super().__init__(message)
        self.installed = installed


def answers(host: str) -> bool:
    """Whether the emulator at host:port answers HTTP (it does once it accepts API calls)."""
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def stop_group(proc: subprocess.Popen[bytes]) -> None:
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


@contextmanager
def running_emulator(log: Path, project: str = PROJECT, timeout: float = 60) -> Iterator[str]:
    """host:port of a Pub/Sub emulator started for the block; its output goes to `log`.

    Raises `EmulatorUnavailable` when gcloud is missing or the emulator does not answer within `timeout`.
    """
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise EmulatorUnavailable(f"gcloud not found: {INSTALL_HINT}", installed=False)
    host = f"127.0.0.1:{free_port()}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [gcloud, "beta", "emulators", "pubsub", "start", f"--host-port={host}", f"--project={project}"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stopping it reaches the java it forks
        )
    try:
        deadline = time.monotonic() + timeout
        while not answers(host):
            if proc.poll() is not None or time.monotonic() > deadline:
                exited = proc.poll() is not None
                state = f"exited with {proc.returncode}" if exited else f"no answer after {timeout:g} s"
                raise EmulatorUnavailable(
                    f"Pub/Sub emulator on {host}: {state}; {INSTALL_HINT}\n{log.read_text(errors='replace')}",
                    installed=True,
                )
            time.sleep(0.1)
        yield host
    finally:
        stop_group(proc)


class PubSubAdmin:
    """The emulator as an operator and the Connector use it: create topics and subscriptions, publish."""

    def __init__(self, host: str, project: str = PROJECT) -> None:
        self.host = host
        self.project = project
        self.api_root = f"http://{host}/v1"

    @staticmethod
    def unique(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    def publisher(self) -> PublisherClient:
        return PublisherClient(api_root=self.api_root, api_is_dev=True)

    def subscriber(self) -> SubscriberClient:
        return SubscriberClient(api_root=self.api_root, api_is_dev=True)

    async def create_topic(self) -> str:
        topic = PublisherClient.topic_path(self.project, self.unique("topic"))
        async with self.publisher() as client:
            await client.create_topic(topic)
        return topic

    async def create_subscription(self, topic: str, ack_deadline: int = 10, name: str | None = None) -> str:
        subscription = SubscriberClient.subscription_path(self.project, name or self.unique("sub"))
        async with self.subscriber() as client:
            await client.create_subscription(subscription, topic, {"ackDeadlineSeconds": ack_deadline})
        return subscription

    @staticmethod
    def connector_message(trigger: str, data: bytes) -> PubsubMessage:
        """One message as the Connector publishes it: the JSON of the event's data, one attribute `namespace`."""
        return PubsubMessage(data, namespace=trigger)

    async def publish(self, topic: str, events: list[dict[str, Any]]) -> list[str]:
        """Publish `{trigger, data}` events like the Connector (`{}` for an event without data)."""
        messages = [self.connector_message(e["trigger"], orjson.dumps(e.get("data", {}))) for e in events]
        return await self.publish_raw(topic, messages)

    async def publish_raw(self, topic: str, messages: list[PubsubMessage]) -> list[str]:
        async with self.publisher() as client:
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
