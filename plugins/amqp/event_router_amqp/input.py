"""Input `amqp`: consumes what the Connector's messageBrokerPublisher sends to RabbitMQ.

The Connector publishes each event with routing key = namespace and body = compact JSON of `data` only
(`{}` for events without data), no properties, to an exchange that must already exist. This input binds a
durable queue to that exchange, takes messages in batches, stores each batch through the sink and only
then acknowledges it with one `basic.ack(multiple)`: nothing is acknowledged that is not on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from anyio.abc import TaskStatus

from event_router.api import (
    DURATION_SCHEMA,
    Backoff,
    BatchStore,
    ConfigError,
    Event,
    EventSink,
    Input,
    PluginContext,
    Readiness,
    Rejected,
    decode_event,
    parse_duration,
    redact_url,
    scrub,
    secret_schema,
    started_once,
    url_secrets,
)
from event_router_amqp.common import (
    EXCHANGE_TYPES,
    PLACEHOLDER_URL,
    check_url,
    describe_error,
    json_safe,
    wire_text,
)

# aio-pika is imported in the methods that connect: routers without AMQP skip its memory and start-up cost
if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractQueue
    from aiormq.abc import AbstractChannel as Underlay
    from aiormq.abc import DeliveredMessage

#: redeliveries remembered per message id on classic queues (they carry no delivery count)
_SEEN_LIMIT = 10_000
#: the first and the longest pause after a batch the spool could not take (given back to the broker): a
#: spool error is local (disk full, I/O error) and the broker hands the batch out again at once
_STORE_RETRY = (0.2, 5.0)

_T = TypeVar("_T")


class ConnectionLost(Exception):
    """The broker closed the connection or channel; unacknowledged messages go back to the queue."""


class StepTimeout(ConnectionLost):
    """The broker did not answer one step of setting up the consumer in time; the connection is made again."""

    def __init__(self, step: str, message: str):
        super().__init__(message)
        self.step = step


def _pass_through() -> tuple[type[BaseException], ...]:
    """Failures of the broker side: the batch is left unacknowledged and the connection is made again."""
    from event_router_amqp.errors import CONNECTION_ERRORS

    return (ConnectionLost, *CONNECTION_ERRORS)


class _Inbox:
    """Messages the broker pushed, in delivery order, until the batch loop takes them.

    The broker never pushes more than `prefetch` unacknowledged messages, so this is bounded by it.
    """

    def __init__(self) -> None:
        self.items: deque[DeliveredMessage] = deque()
        self.lost: BaseException | None = None
        self._wake = asyncio.Event()

    async def put(self, message: DeliveredMessage) -> None:
        self.items.append(message)
        self._wake.set()

    def on_close(self, _sender: Any, exc: BaseException | None = None) -> None:
        if self.lost is None:
            self.lost = exc or ConnectionLost("closed")
        self._wake.set()

    def check(self) -> None:
        if self.lost is not None:
            raise ConnectionLost(describe_error(self.lost)) from self.lost

    async def take(self, limit: int, wait: float) -> list[DeliveredMessage]:
        """At least one message, and as many as arrive within `wait` up to `limit`."""
        while not self.items:
            self.check()
            self._wake.clear()
            await self._wake.wait()
        if len(self.items) < limit and wait > 0:
            await anyio.sleep(wait)
        self.check()
        count = min(limit, len(self.items))
        return [self.items.popleft() for _ in range(count)]


class AmqpInput(Input):
    """Consumes a RabbitMQ queue bound to the Connector's exchange (`type = "amqp"`)."""

    type_name = "amqp"
    config_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["url"],
        "properties": {
            "url": secret_schema(PLACEHOLDER_URL, url=True),
            "exchange": {"type": "string", "description": 'the Connector\'s exchange; "" is the default exchange'},
            "exchange_type": {"enum": EXCHANGE_TYPES},
            "declare_exchange": {"type": "boolean"},
            "queue": {"type": "string", "minLength": 1, "maxLength": 255},
            "queue_type": {"enum": ["quorum", "classic"]},
            "declare": {"type": "boolean"},
            "bindings": {"type": "array", "items": {"type": "string", "maxLength": 255}, "minItems": 1},
            "prefetch": {"type": "integer", "minimum": 1, "maximum": 65535},
            "batch_size": {"type": "integer", "minimum": 1, "maximum": 10000},
            "batch_wait": DURATION_SCHEMA,
            "max_redeliveries": {"type": "integer", "minimum": 0},
            "reconnect_max": DURATION_SCHEMA,
            "connect_timeout": DURATION_SCHEMA,
        },
    }

    def __init__(self, config: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(config, context)
        self.url = check_url(str(config["url"]))
        self.safe_url = redact_url(self.url)
        self.exchange: str = config.get("exchange", "")
        self.exchange_type: str = config.get("exchange_type", "topic")
        self.declare_exchange: bool = config.get("declare_exchange", False)
        self.queue: str = config.get("queue", "event-router")
        self.queue_type: str = config.get("queue_type", "quorum")
        self.declare: bool = config.get("declare", True)
        self.bindings: list[str] = list(config.get("bindings", ["#"]))
        self.prefetch: int = config.get("prefetch", 1000)
        self.batch_size: int = config.get("batch_size", 500)
        self.max_redeliveries: int = config.get("max_redeliveries", 5)
        self.batch_wait = _duration(config, "batch_wait", "5ms")
        self.reconnect_max = _duration(config, "reconnect_max", "30s")
        #: how long connecting, and each broker call before consuming, may take before the attempt counts as failed
        self.connect_timeout = _duration(config, "connect_timeout", "15s")
        if self.exchange == "" and self.declare_exchange:
            raise ConfigError("declare_exchange", 'the default exchange "" always exists and cannot be declared')
        if self.reconnect_max <= 0:
            raise ConfigError("reconnect_max", "must be more than 0")
        if self.connect_timeout <= 0:
            raise ConfigError("connect_timeout", "must be more than 0")
        # a batch can never fill beyond what the broker lets through unacknowledged
        self.batch_size = min(self.batch_size, self.prefetch)
        self._readiness = Readiness(f"connecting to {self.safe_url}: no answer yet")
        #: True from the first consumed batch of a connection: a failure then is a lost connection
        self._consuming = False
        #: message id -> redeliveries seen (classic queues, which send no x-delivery-count)
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._reconnect = Backoff.reconnect(self.reconnect_max, initial=0.2)
        first, longest = _STORE_RETRY
        self._store_retry = Backoff.reconnect(min(self.reconnect_max, longest), initial=first)

    def is_ready(self) -> bool:
        return self._readiness.ready

    def not_ready_reason(self) -> str | None:
        return self._readiness.reason()

    def _failed(self, what: str, error: str) -> None:
        """Not ready for `error` (as logged): the reason /readyz gives, without the url's password."""
        self._readiness.failed(scrub(f"{what}: {error}", url_secrets(self.url)))

    def guarantee(self) -> str:
        # The Connector publishes transient, non-mandatory messages on a channel without confirms, logs a
        # failed publish and never reconnects (enmeshed-events.md 3.1): the guarantee starts in the queue.
        # A quorum queue writes every message to disk; a classic one keeps transient messages in memory.
        if not self.declare:
            queue = f"queue {self.queue!r} as it is"
        elif self.queue_type == "quorum":
            queue = "durable quorum queue"
        else:
            queue = "durable classic queue, which loses transient messages on a broker restart,"
        return (
            f"{queue} + ack after storing: at least once from the broker; but the Connector publishes without "
            "confirms and never reconnects"
        )

    async def run(self, sink: EventSink, *, task_status: TaskStatus[None]) -> None:
        # Started once consuming (queue declared and bound, consumer registered): before, what the Connector
        # publishes to the exchange reaches no queue and is dropped. The router serves its other inputs
        # meanwhile, and this one keeps retrying while the broker is down.
        started = started_once(task_status)
        pass_through = _pass_through()
        store = BatchStore(sink, self.log, self.batch_size, {"queue": self.queue})
        while True:
            try:
                await self._consume(store, started)
            except pass_through as exc:
                delay = self._reconnect.failed()
                error = str(exc) if isinstance(exc, ConnectionLost) else describe_error(exc)
                if self._consuming:
                    self._failed("lost the broker connection; reconnecting", error)
                    self.log.warning(
                        "lost the broker connection; reconnecting",
                        extra={"url": self.safe_url, "error": error, "retry_in": round(delay, 2)},
                    )
                else:
                    explained = _explain(exc, self)
                    self._failed("cannot consume from the broker", explained)
                    self.log.error(
                        "cannot consume from the broker",
                        extra={
                            "url": self.safe_url,
                            "queue": self.queue,
                            "exchange": self.exchange,
                            "step": exc.step if isinstance(exc, StepTimeout) else None,
                            "error": explained,
                            "retry_in": round(delay, 2),
                        },
                    )
            except Exception as exc:  # a bug must not end the input: the broker keeps what is unacknowledged
                delay = self._reconnect.failed()
                self._failed("unexpected error while consuming; reconnecting", describe_error(exc))
                self.log.exception(
                    "unexpected error while consuming; reconnecting",
                    extra={"url": self.safe_url, "error": describe_error(exc), "retry_in": round(delay, 2)},
                )
            finally:
                self._readiness.stopped()
                self._consuming = False
            await anyio.sleep(delay)

    async def _consume(self, store: BatchStore, started: Callable[[], None]) -> None:
        import aio_pika

        from event_router_amqp import tolerant_decode

        # a name that is not UTF-8 must reach _decode as a dead letter, not drop the connection in a loop
        tolerant_decode.install()
        inbox = _Inbox()
        connection = await aio_pika.connect(
            self.url,
            timeout=self.connect_timeout,
            client_properties={"connection_name": f"event-router input {self.name}"},
        )
        try:
            connection.close_callbacks.add(inbox.on_close)
            channel = await self._step("channel.open", connection.channel(publisher_confirms=False))
            channel.close_callbacks.add(inbox.on_close)
            await self._step("basic.qos", channel.set_qos(prefetch_count=self.prefetch))
            queue = await self._queue(channel)
            underlay = await channel.get_underlay_channel()
            cancelled = ConnectionLost(f"the broker cancelled the consumer of {self.queue} (queue deleted?)")
            underlay.on_consumer_cancel_callbacks.add(lambda _frame: inbox.on_close(None, cancelled))
            # aiormq's own consumer: aio-pika's wrapper adds a message object and a task per message on the
            # hot path, and this input needs nothing from it
            await self._step("basic.consume", underlay.basic_consume(queue.name, inbox.put, no_ack=False))
            self._readiness.consuming()
            self._consuming = True
            self._reconnect.healthy()
            self.log.info(
                "consuming from the broker",
                extra={"url": self.safe_url, "queue": self.queue, "exchange": self.exchange, "prefetch": self.prefetch},
            )
            started()
            while True:
                batch = await inbox.take(self.batch_size, self.batch_wait)
                await self._handle(store, batch, inbox, underlay)
        finally:
            self._readiness.stopped()
            # a close on a connection the broker already dropped may fail too: that is not the news
            with anyio.CancelScope(shield=True), anyio.move_on_after(5), contextlib.suppress(Exception):
                await connection.close()

    async def _step(self, step: str, call: Awaitable[_T]) -> _T:
        """`call`, or `StepTimeout` when the broker does not answer it within `connect_timeout`.

        A broker can accept a connection and then never answer: RabbitMQ 3.10.8 leaves a quorum queue that
        was killed just after its creation without a leader (rabbitmq/ra#443), and `basic.consume` on it waits
        forever. Without a bound the input would stay not ready with nothing in its log.
        """
        with anyio.move_on_after(self.connect_timeout) as scope:
            return await call
        assert scope.cancelled_caught
        raise StepTimeout(
            step,
            f"{step} on queue {self.queue!r} got no answer from the broker within {self.connect_timeout:g}s",
        )

    async def _queue(self, channel: AbstractChannel) -> AbstractQueue:
        if not self.declare:
            return await self._step("queue.declare (passive)", channel.get_queue(self.queue, ensure=True))
        if self.declare_exchange:
            await self._step(
                "exchange.declare", channel.declare_exchange(self.exchange, self.exchange_type, durable=True)
            )
        # classic is the broker's default type; naming it would clash with queues declared without the argument
        arguments: dict[str, Any] | None = {"x-queue-type": "quorum"} if self.queue_type == "quorum" else None
        queue = await self._step("queue.declare", channel.declare_queue(self.queue, durable=True, arguments=arguments))
        if self.exchange:
            for binding in self.bindings:
                await self._step(f"queue.bind {binding!r}", queue.bind(self.exchange, routing_key=binding))
        return queue

    # --- one batch --------------------------------------------------------------------------------

    async def _handle(
        self, store: BatchStore, batch: Sequence[DeliveredMessage], inbox: _Inbox, channel: Underlay
    ) -> None:
        """Store `batch` (dead letters included), acknowledging up to each stored part once it is stored."""
        acked = 0

        async def stored(_start: int, end: int) -> None:
            nonlocal acked
            inbox.check()  # a lost channel cannot acknowledge: the broker delivers the part again
            acked = await self._ack(channel, batch[end - 1], acked)

        async def waiting(_start: int) -> None:
            inbox.check()  # the broker took the messages back: they come again, do not store them twice

        try:
            await store.store([self._decode(message) for message in batch], stored, waiting)
        except _pass_through():
            raise
        except Exception as exc:  # the spool cannot take the batch (nor its dead letters)
            await self._give_back(channel, batch[-1], acked, exc)
            return
        self._store_retry.healthy()
        if self._seen:
            for message in batch:
                if message.header.properties.message_id:
                    self._seen.pop(message.header.properties.message_id, None)

    def _decode(self, message: DeliveredMessage) -> Event | Rejected:
        """The event in `message`, or the dead letter it becomes (then it is acknowledged like an event)."""
        delivery: Any = message.delivery
        props = message.header.properties
        trigger: str = delivery.routing_key or ""
        headers = props.headers
        count = self._delivery_count(headers, delivery.redelivered, props.message_id)
        # names that were not UTF-8 on the wire hold surrogates (tolerant_decode), which orjson cannot store
        routing_key = wire_text(trigger)
        meta: dict[str, Any] = {
            "exchange": wire_text(delivery.exchange or ""),
            "routing_key": routing_key,
            "redelivered": bool(delivery.redelivered),
            "delivery_count": count,
        }
        if props.message_id:
            meta["message_id"] = wire_text(props.message_id)
        if props.content_type:
            meta["content_type"] = wire_text(props.content_type)
        if headers and (len(headers) > 1 or "x-delivery-count" not in headers):
            # the count is `delivery_count` already
            meta["headers"] = {wire_text(k): json_safe(v) for k, v in headers.items() if k != "x-delivery-count"}
        refuse: str | None = None
        if count > self.max_redeliveries:
            # a message that keeps coming back would otherwise loop forever
            refuse = f"redelivered {count} times"
        elif not trigger:
            refuse = "no routing key: cannot tell the event type"
        elif routing_key != trigger:
            # no event type can be named so; meta keeps the key's bytes, each one not UTF-8 as \xNN
            refuse = "routing key is not UTF-8"
        # a dead letter is filed under the key as text
        return decode_event(
            routing_key or None, bytes(message.body), source=self.name, meta=meta, refuse=refuse, what="body"
        )

    def _delivery_count(self, headers: Mapping[str, Any] | None, redelivered: bool, message_id: str | None) -> int:
        """How often the broker delivered this message before: quorum queues say so, classic ones do not."""
        header = headers.get("x-delivery-count") if headers else None
        if isinstance(header, int) and not isinstance(header, bool):
            return header
        if not redelivered:
            return 0
        if not message_id:
            return 1  # the Connector sets no message id: on a classic queue there is nothing to count by
        count = self._seen.pop(message_id, 0) + 1
        self._seen[message_id] = count
        if len(self._seen) > _SEEN_LIMIT:
            self._seen.popitem(last=False)
        return count

    async def _ack(self, channel: Underlay, message: DeliveredMessage, acked: int) -> int:
        """Acknowledge every message up to and including `message` (once); returns the last tag acknowledged."""
        tag = message.delivery_tag or 0
        if tag > acked:
            await channel.basic_ack(delivery_tag=tag, multiple=True)
            return tag
        return acked

    async def _give_back(self, channel: Underlay, last: DeliveredMessage, acked: int, exc: Exception) -> None:
        """The spool could not take the batch: return it to the queue and pause before taking more."""
        delay = self._store_retry.failed()
        self.log.error(
            "could not store a batch; returning it to the broker",
            extra={"queue": self.queue, "error": describe_error(exc), "retry_in": round(delay, 2)},
        )
        tag = last.delivery_tag or 0
        if tag > acked:
            await channel.basic_nack(delivery_tag=tag, multiple=True, requeue=True)
        await anyio.sleep(delay)


def _duration(config: Mapping[str, Any], key: str, default: str) -> float:
    try:
        return parse_duration(config.get(key, default))
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _explain(exc: BaseException, inp: AmqpInput) -> str:
    """The error, with what to do about the usual set-up mistakes."""
    text = describe_error(exc)
    if "NOT_FOUND" in text and "exchange" in text:
        return (
            f"{text}: create the exchange (the Connector does not either) or set declare_exchange = true"
            if not inp.declare_exchange
            else text
        )
    if "NOT_FOUND" in text and "queue" in text and not inp.declare:
        return f"{text}: create the queue, or set declare = true"
    if "PRECONDITION_FAILED" in text and "x-queue-type" in text:
        return f"{text}: the queue exists with another type; set queue_type to match it"
    if "ACCESS_REFUSED" in text or "authentication" in text.lower():
        return f"{text}: check the user and password in url"
    if isinstance(exc, StepTimeout):
        text = str(exc)
        if exc.step == "basic.consume" and inp.queue_type == "quorum":
            return (
                f"{text}: a quorum queue without a leader never answers it (RabbitMQ 3.10, rabbitmq/ra#443); "
                f"see `rabbitmq-queues quorum_status {inp.queue}`"
            )
    return text
