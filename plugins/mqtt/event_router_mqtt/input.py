"""Input `mqtt`: subscribes to what the Connector's messageBrokerPublisher publishes to an MQTT broker.

The Connector publishes each event to the topic `<namespace with . replaced by />` (no prefix) with the
compact JSON of `data` as payload (`{}` for events without data), at QoS 0, not retained. This input
subscribes with a persistent session (clean_session false) and sends the PUBACK of a QoS 1 message only
once its event is stored: paho-mqtt's manual acknowledgements, reached through aiomqtt's client.

What the broker delivers at QoS 0 (everything the Connector publishes) is acknowledged by nothing: it is
the router's once it arrives, and the broker keeps QoS 0 messages for an offline session only when it is
configured to (Mosquitto: `queue_qos0_messages true`). docs/plugins/mqtt.md says what that means.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from event_router.api import (
    Backoff,
    BatchStore,
    ConfigError,
    Event,
    EventSink,
    Input,
    PluginContext,
    Readiness,
    Rejected,
    SpoolFull,
    decode_event,
    scrub,
    started_once,
)
from event_router_mqtt.settings import CONFIG_SCHEMA, parse_settings, trigger_for

# aiomqtt and paho are imported in the methods that connect: routers without MQTT skip their memory and start-up cost
if TYPE_CHECKING:
    import aiomqtt
    import paho.mqtt.client as paho

#: how long stopping may take to store (and acknowledge) what already arrived
_DRAIN_TIMEOUT = 5.0
#: one connection attempt, until CONNACK
_CONNECT_TIMEOUT = 10.0

Ack = Callable[[int, int], object]


class _Inbox(asyncio.Queue["aiomqtt.Message"]):
    """aiomqtt's incoming queue, owned by the input so that nothing in it is lost when the connection ends.

    aiomqtt takes a message off the queue in a task of its own; if that task finished just as the reader
    was cancelled, the message would be gone. `taken` keeps it until the reader has it.
    """

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.taken: list[aiomqtt.Message] = []

    async def get(self) -> aiomqtt.Message:
        message = await super().get()
        self.taken.append(message)
        return message

    def leftovers(self) -> list[aiomqtt.Message]:
        """Everything received and not yet handed to the reader, in arrival order."""
        out, self.taken = self.taken, []
        while not self.empty():
            out.append(self.get_nowait())
        return out


class MqttInput(Input):
    """Subscribes to the Connector's topics on an MQTT broker (`type = "mqtt"`)."""

    type_name = "mqtt"
    config_schema = CONFIG_SCHEMA

    def __init__(self, config: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(config, context)
        self.settings = parse_settings(config, self.name)
        if int(version("paho-mqtt").split(".")[0]) < 2:
            # without manual acknowledgements (paho-mqtt 2.0) paho sends PUBACK before the event is stored
            raise ConfigError("", "needs paho-mqtt 2.0 or later (manual acknowledgements); upgrade aiomqtt")
        self._reconnect = Backoff.reconnect(self.settings.reconnect_max)
        self._readiness = Readiness(f"connecting to {self.settings.broker.display}: no answer yet")
        self._connected = False
        #: how many messages of a batch go to the spool at once; shrinks while the spool is full
        self._store: BatchStore | None = None

    def is_ready(self) -> bool:
        return self._readiness.ready

    def not_ready_reason(self) -> str | None:
        return self._readiness.reason()

    def guarantee(self) -> str:
        # The Connector publishes at QoS 0 (enmeshed-events.md 3.3) and the broker delivers min(publish QoS,
        # subscription QoS): its events arrive at QoS 0, unacknowledged, whatever `qos` says. A broker keeps
        # QoS 0 messages for an offline persistent session only where it is configured to; a clean session
        # loses even unacknowledged QoS 1 messages when the connection ends.
        s = self.settings
        if s.clean_session:
            return f"QoS {s.qos}, clean session: at most once; lost while the router is not connected"
        away = "lost while the router is not connected unless the broker queues QoS 0"
        if s.qos == 0:
            return f"QoS 0: at most once in transit; {away}"
        return f"QoS 1, persistent session: at least once for QoS 1 publishes, but the Connector's are QoS 0: {away}"

    async def run(self, sink: EventSink, *, task_status: TaskStatus[None]) -> None:
        # Started once the broker acknowledged the subscription (SUBACK): before, what the Connector publishes
        # reaches no subscriber (a new session) and is dropped. The router serves its other inputs meanwhile.
        started = started_once(task_status)
        import aiomqtt

        broker = self.settings.broker.display
        while True:
            self._connected = False
            try:
                await self._session(sink, started)
                error = "the broker closed the connection"
            except aiomqtt.MqttError as exc:
                error = _describe(exc)
            except Exception as exc:  # a bug must not end the input: the broker redelivers what is not acked
                error = _describe(exc)
                self.log.exception("unexpected error in the MQTT input", extra={"broker": broker, "error": error})
            finally:
                self._readiness.stopped()
            delay = self._reconnect.failed()
            what = "lost the MQTT broker; reconnecting" if self._connected else "cannot connect to the MQTT broker"
            password = self.settings.broker.password
            self._readiness.failed(scrub(f"{what}: {error}", [password] if password else []))
            self.log.warning(
                what,
                extra={
                    "broker": broker,
                    "client_id": self.settings.client_id,
                    "error": error,
                    "attempt": self._reconnect.attempt,
                    "retry_in": round(delay, 2),
                },
            )
            await anyio.sleep(delay)

    async def _session(self, sink: EventSink, started: Callable[[], None]) -> None:
        """One connection: subscribe, then take messages until it ends (MqttError) or the router stops."""
        import aiomqtt

        s = self.settings
        inbox = _Inbox()
        client = aiomqtt.Client(
            s.broker.host,
            s.broker.port,
            username=s.broker.username,
            password=s.broker.password,
            identifier=s.client_id,
            clean_session=s.clean_session,
            # loading the CA bundle reads files: done here, never in the constructor
            tls_context=ssl.create_default_context() if s.broker.tls else None,
            queue_type=lambda maxsize=0: inbox,  # type: ignore[arg-type]
            timeout=_CONNECT_TIMEOUT,
        )
        # aiomqtt 2.x has no option for it; paho's own switch must be set before CONNECT, because a
        # persistent session's unacknowledged messages arrive right after CONNACK.
        mqtt: paho.Client = client._client
        mqtt.manual_ack_set(True)
        await client.__aenter__()
        try:
            granted = await client.subscribe([(topic, s.qos) for topic in s.topics])
            refused = [t for t, code in zip(s.topics, granted, strict=False) if _code(code) >= 0x80]
            if refused:
                raise aiomqtt.MqttError(
                    f"the broker refused the subscription to {', '.join(refused)} (not authorized?)"
                )
            # only now: a broker that takes the connection but refuses the subscription still backs off
            self._connected = True
            self._readiness.consuming()
            self._reconnect.healthy()
            self.log.info(
                "subscribed to the MQTT broker",
                extra={
                    "broker": s.broker.display,
                    "client_id": s.client_id,
                    "topics": list(s.topics),
                    "qos": s.qos,
                    "clean_session": s.clean_session,
                },
            )
            started()
            await self._consume(client, inbox, sink, mqtt.ack)
        except anyio.get_cancelled_exc_class():
            self._readiness.stopped()
            with anyio.move_on_after(_DRAIN_TIMEOUT, shield=True):
                await self._fence(client)
                # Still connected: store what arrived and acknowledge it, so the PUBACKs go out before DISCONNECT.
                await self._drain(sink, inbox.leftovers(), mqtt.ack)
            raise
        finally:
            self._readiness.stopped()
            with anyio.move_on_after(_DRAIN_TIMEOUT, shield=True):
                # DISCONNECT, then read until the broker closes the connection: what it wrote meanwhile
                # lands in the inbox instead of being dropped with the socket.
                await client.__aexit__(None, None, None)
            # Gone with the connection, nothing to acknowledge on: QoS 0 messages (the broker forgot them
            # once sent) and, without a persistent session, QoS 1 ones. A persistent session sends the
            # QoS 1 ones again, so storing them now would store them twice.
            kept = [m for m in inbox.leftovers() if m.qos == 0 or s.clean_session]
            with anyio.move_on_after(_DRAIN_TIMEOUT, shield=True):
                await self._drain(sink, kept, None)

    async def _fence(self, client: aiomqtt.Client) -> None:
        """A round trip to the broker before stopping: its answer comes after every message it had sent us.

        paho closes the socket as soon as DISCONNECT is written, dropping what is still unread in it, and
        QoS 0 messages are not sent again. UNSUBSCRIBE of a filter this client never subscribed changes
        nothing in the session; by the time UNSUBACK arrives, what the broker sent before is in the inbox.
        """
        import aiomqtt

        # a connection that is gone already left what it held in the inbox, or lost it with the socket
        with contextlib.suppress(aiomqtt.MqttError):
            await client.unsubscribe(f"event-router/{self.settings.client_id}/stopping", timeout=2.0)

    async def _consume(self, client: aiomqtt.Client, inbox: _Inbox, sink: EventSink, ack: Ack) -> None:
        messages = aiter(client.messages)
        while True:
            first = await anext(messages)
            inbox.taken.clear()
            batch = [first]
            # what is already queued joins the batch: one spool write for a burst, no waiting when idle
            while len(batch) < self.settings.batch_size and not inbox.empty():
                batch.append(inbox.get_nowait())
            await self._handle(sink, batch, ack)

    async def _handle(self, sink: EventSink, batch: Sequence[aiomqtt.Message], ack: Ack) -> None:
        """Store `batch` (dead letters included), acknowledging each part once stored; hold it while the
        spool is full. Nothing is acknowledged meanwhile: the broker stops sending QoS 1 messages once its
        in-flight window (Mosquitto: max_inflight_messages, 20) is unacknowledged and keeps the rest."""

        async def stored(start: int, end: int) -> None:
            _ack_all(batch[start:end], ack)

        await self._batches(sink).store([self._decode(m) for m in batch], stored=stored)

    def _batches(self, sink: EventSink) -> BatchStore:
        if self._store is None or self._store.sink is not sink:
            self._store = BatchStore(sink, self.log, self.settings.batch_size)
        return self._store

    async def _drain(self, sink: EventSink, messages: Sequence[aiomqtt.Message], ack: Ack | None) -> None:
        """Best effort, on the way out: store what arrived but was not handled yet."""
        if not messages:
            return
        try:
            await self._batches(sink).store_now([self._decode(m) for m in messages])
        except SpoolFull:
            lost = sum(1 for m in messages if m.qos == 0)
            self.log.error(
                "spool full while stopping: QoS 0 messages already received are lost",
                extra={"lost": lost, "left_to_broker": len(messages) - lost},
            )
            return
        if ack is not None:
            _ack_all(messages, ack)
        self.log.info("stored messages received before the connection ended", extra={"count": len(messages)})

    def _decode(self, message: aiomqtt.Message) -> Event | Rejected:
        topic = message.topic.value
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload or "").encode()
        meta: dict[str, Any] = {"topic": topic, "qos": message.qos, "retain": bool(message.retain)}
        try:
            trigger = trigger_for(topic, self.settings.topic_prefix)
        except ValueError as exc:
            return decode_event(None, payload, source=self.name, meta=meta, refuse=str(exc))
        return decode_event(trigger, payload, source=self.name, meta=meta)


def _ack_all(messages: Sequence[aiomqtt.Message], ack: Ack) -> None:
    # in arrival order, as MQTT 3.1.1 (4.6) wants PUBACKs; QoS 0 messages have nothing to acknowledge
    for message in messages:
        if message.qos > 0:
            ack(message.mid, message.qos)


def _code(granted: Any) -> int:
    """A SUBACK entry as a number: an int (MQTT 3.1.1) or a ReasonCode (MQTT 5)."""
    value = getattr(granted, "value", granted)
    return int(value) if isinstance(value, int) else 0


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
