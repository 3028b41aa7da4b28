"""Input `type = "pubsub"`: pulls what the Connector's PubSub broker publishes, acks once stored.

One pull loop per input. A pulled batch is decoded, handed to the sink, and acknowledged (one
`acknowledge` call per `submit`) only once `submit`/`reject` returned. While a batch is being stored, or
held because the spool is full, its ack deadline is extended with `modifyAckDeadline`, so Pub/Sub does not
hand the same messages out again meanwhile. Anything not acknowledged is redelivered by Pub/Sub: a crash
or a stop loses nothing, it can only duplicate.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
from anyio.abc import TaskStatus

from event_router.api import Backoff, BatchStore, EventSink, Input, PluginContext, Readiness, started_once
from event_router_pubsub.decode import decode
from event_router_pubsub.settings import CONFIG_SCHEMA, MIN_ACK_DEADLINE, parse_settings

# gcloud-aio-pubsub is imported in the method that connects: routers without Pub/Sub skip its memory and start-up cost
if TYPE_CHECKING:
    from gcloud.aio.pubsub import SubscriberClient, SubscriberMessage

# Pub/Sub (and its emulator) answer a pull on an empty subscription after about 90 s. A client that
# gives up earlier leaves the pull registered on the server, which then hands it the next messages: they
# stay invisible for a whole ack deadline. So the client waits longer than the server.
PULL_TIMEOUT = aiohttp.ClientTimeout(total=120, connect=10)
#: acknowledge / modifyAckDeadline / subscription calls
CALL_TIMEOUT = 10
#: how long a stop may wait to give held messages back (nack) or to acknowledge stored ones
STOP_TIMEOUT = 5.0


class Unavailable(Exception):
    """Pulling cannot start (subscription or topic missing, unreadable key file): retried with backoff."""


class PubSubInput(Input):
    """Pulls the Connector's events from a Google Cloud Pub/Sub subscription (`type = "pubsub"`)."""

    type_name = "pubsub"
    config_schema = CONFIG_SCHEMA

    def __init__(self, config: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(config, context)
        self.settings = parse_settings(config, context.config_dir)
        #: healthy once a pull answers, so a pull that always fails still backs off
        self._reconnect = Backoff.reconnect(self.settings.reconnect_max)
        # when the first extension of a fresh batch is due; the subscription's own deadline may be 10 s
        self._first_extension = MIN_ACK_DEADLINE / 2
        self._readiness = Readiness(f"connecting to {self.settings.endpoint}: no answer yet")

    def is_ready(self) -> bool:
        return self._readiness.ready

    def not_ready_reason(self) -> str | None:
        return self._readiness.reason()

    def guarantee(self) -> str:
        # The Connector's client publishes with the library's default retries, then logs and drops; only
        # subscriptions that exist at publish time get a message (enmeshed-events.md 3.2)
        return (
            "subscription + ack after storing: at least once from the subscription, which keeps events while the "
            "router is away once it exists; the Connector drops a publish that fails after its client's retries"
        )

    async def run(self, sink: EventSink, *, task_status: TaskStatus[None]) -> None:
        # Started once the subscription exists (created if configured), just before the first pull: Pub/Sub
        # keeps for a subscription what is published after it exists, and drops what came before. While
        # Pub/Sub is unreachable the router serves its other inputs; this one retries, not ready (/readyz).
        started = started_once(task_status)
        store = BatchStore(sink, self.log, self.settings.max_messages, {"subscription": self.settings.subscription})
        try:
            while True:
                try:
                    async with self._client() as client:
                        await self._prepare(client)
                        self._readiness.consuming()
                        self.log.info(
                            "pubsub input pulling",
                            extra={"subscription": self.settings.subscription, "endpoint": self.settings.endpoint},
                        )
                        started()
                        await self._consume(client, store)
                except Exception as exc:  # every failure ends in a logged, backed-off retry, never a dead router
                    self._readiness.stopped()
                    delay = self._reconnect.failed()
                    self._log_failure(_unwrap(exc), delay)
                    await anyio.sleep(delay)
        finally:
            self._readiness.stopped()

    def _log_failure(self, exc: Exception, delay: float) -> None:
        extra = {
            "subscription": self.settings.subscription,
            "endpoint": self.settings.endpoint,
            "error": _describe(exc),
            "retry_in": round(delay, 2),
        }
        known = (Unavailable, aiohttp.ClientError, TimeoutError, OSError)
        # the key file is read, never echoed: an error names the subscription and the endpoint, no secret
        self._readiness.failed(f"cannot pull from subscription {self.settings.subscription}: {_describe(exc)}")
        self.log.warning(
            "pubsub input cannot pull; retrying",
            extra=extra,
            exc_info=None if isinstance(exc, known) else exc,
        )

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[SubscriberClient]:
        from gcloud.aio.pubsub import SubscriberClient

        settings = self.settings
        if settings.api_root is not None:
            # the emulator takes no credentials
            client = SubscriberClient(api_root=settings.api_root, api_is_dev=True)
        elif settings.key_file is not None:
            client = SubscriberClient(service_file=await self._read_key_file())
        else:
            # application default credentials: $GOOGLE_APPLICATION_CREDENTIALS, gcloud's, or the metadata server
            client = SubscriberClient()
        try:
            yield client
        finally:
            with anyio.CancelScope(shield=True):
                await client.close()

    async def _read_key_file(self) -> io.StringIO:
        """The key file's content, checked: the client would silently fall back to other credentials."""
        path = self.settings.key_file
        assert path is not None
        try:
            text = await anyio.Path(path).read_text()
            key = json.loads(text)
        except (OSError, ValueError) as exc:
            raise Unavailable(f"key_file {path}: {exc}") from None
        if not isinstance(key, dict) or "type" not in key:
            raise Unavailable(f"key_file {path}: not a Google service-account key (no 'type')")
        return io.StringIO(text)

    async def _prepare(self, client: SubscriberClient) -> None:
        """Check the subscription exists (creating it if configured) and learn its ack deadline."""
        settings = self.settings
        try:
            info = await client.get_subscription(settings.subscription, timeout=CALL_TIMEOUT)
        except aiohttp.ClientResponseError as exc:
            if exc.status == 403:
                # roles/pubsub.subscriber may pull without being allowed to read the subscription
                self.log.info(
                    "not allowed to read the subscription; pulling anyway",
                    extra={"subscription": settings.subscription},
                )
                return
            if exc.status != 404:
                raise
            if not settings.create_subscription or settings.topic is None:
                raise Unavailable(
                    f"subscription {settings.subscription} does not exist: create it on the Connector's topic "
                    "before starting the Connector (Pub/Sub delivers only to subscriptions that exist at publish "
                    "time), or set create_subscription = true and topic"
                ) from None
            info = await self._create_subscription(client)
        self._first_extension = min(float(info.get("ackDeadlineSeconds", MIN_ACK_DEADLINE)), settings.ack_deadline) / 2

    async def _create_subscription(self, client: SubscriberClient) -> dict[str, Any]:
        settings = self.settings
        assert settings.topic is not None
        body = {"ackDeadlineSeconds": int(settings.ack_deadline)}
        try:
            info = await client.create_subscription(settings.subscription, settings.topic, body, timeout=CALL_TIMEOUT)
        except aiohttp.ClientResponseError as exc:
            if exc.status == 404:
                raise Unavailable(
                    f"topic {settings.topic} does not exist: create it (the Connector never creates its topic)"
                ) from None
            if exc.status != 409:
                raise
            # another consumer created it meanwhile
            return await client.get_subscription(settings.subscription, timeout=CALL_TIMEOUT)
        self.log.info("subscription created", extra={"subscription": settings.subscription, "topic": settings.topic})
        return info

    async def _consume(self, client: SubscriberClient, store: BatchStore) -> None:
        settings = self.settings
        while True:
            try:
                messages = await client.pull(
                    settings.subscription,
                    settings.max_messages,
                    timeout=PULL_TIMEOUT,  # type: ignore[arg-type]  # the client takes a ClientTimeout too
                )
            except aiohttp.ServerTimeoutError:
                raise  # could not connect: that is an outage, not an idle subscription
            except TimeoutError:
                continue
            self._reconnect.healthy()
            if messages:
                await self._handle(client, store, messages)

    async def _handle(self, client: SubscriberClient, store: BatchStore, messages: Sequence[SubscriberMessage]) -> None:
        """Store one pulled batch, keeping its messages leased until they are acknowledged: each stored part
        at once, and nothing that is not stored (held while the spool is full)."""
        settings = self.settings
        items = [decode(m, source=self.name, subscription=settings.subscription) for m in messages]
        ack_ids = [m.ack_id for m in messages]
        unacked = set(ack_ids)

        async def stored(start: int, end: int) -> None:
            await client.acknowledge(settings.subscription, ack_ids[start:end], timeout=CALL_TIMEOUT)
            unacked.difference_update(ack_ids[start:end])

        try:
            async with anyio.create_task_group() as lease:
                lease.start_soon(self._keep_leased, client, unacked)
                await store.store(items, stored)
                lease.cancel_scope.cancel()
        finally:
            if unacked:
                # stopping (or failing) with messages in hand: give them back now rather than after the deadline
                # (best effort: they come back after their deadline anyway)
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(STOP_TIMEOUT),
                    suppress(aiohttp.ClientError, TimeoutError),
                ):
                    await client.modify_ack_deadline(self.settings.subscription, sorted(unacked), 0)

    async def _keep_leased(self, client: SubscriberClient, unacked: set[str]) -> None:
        """Extend the ack deadline of the batch in hand until it is acknowledged (then this is cancelled)."""
        settings = self.settings
        delay = self._first_extension
        while True:
            await anyio.sleep(delay)
            delay = settings.ack_deadline / 2
            if not unacked:
                continue
            try:
                await client.modify_ack_deadline(
                    settings.subscription, sorted(unacked), int(settings.ack_deadline), timeout=CALL_TIMEOUT
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.log.warning(
                    "could not extend the ack deadline: Pub/Sub may deliver these messages again (duplicates)",
                    extra={"messages": len(unacked), "error": _describe(exc)},
                )


def _unwrap(exc: Exception) -> Exception:
    """The one error inside the exception groups task groups wrap it in."""
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}: {str(exc.message)[:300]}"
    return str(exc) or type(exc).__name__
