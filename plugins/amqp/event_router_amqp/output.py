"""Output `amqp`: publishes deliveries to a RabbitMQ exchange with publisher confirms.

A delivery counts as delivered only once the broker confirmed it (and, with `mandatory`, routed it to a
queue). One connection and one confirm channel per output, opened at the first delivery and again after
a connection loss; the deliveries of a batch are published together and their confirms awaited together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from event_router.api import (
    ConfigError,
    Delivery,
    MissingValueError,
    Output,
    PermanentError,
    PluginContext,
    RetryableError,
    Template,
    TemplateError,
    compile_template,
    redact_url,
    secret_schema,
)
from event_router_amqp.common import EXCHANGE_TYPES, PLACEHOLDER_URL, check_url, describe_error

# aio-pika is imported in the methods that publish: routers without AMQP skip its memory and start-up cost
if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

#: the fields of `Event.to_dict()` a routing key template may use
_EVENT_FIELDS = ("id", "trigger", "source", "received_at", "data", "meta")
_CONNECT_TIMEOUT = 15.0


class AmqpOutput(Output):
    """Publishes each delivery's payload as JSON to an AMQP exchange (`type = "amqp"`)."""

    type_name = "amqp"
    max_batch = 256
    config_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["url", "exchange"],
        "properties": {
            "url": secret_schema(PLACEHOLDER_URL, url=True),
            "exchange": {"type": "string", "maxLength": 255},
            "routing_key": {"type": "string"},
            "declare_exchange": {"type": "boolean"},
            "exchange_type": {"enum": EXCHANGE_TYPES},
            "persistent": {"type": "boolean"},
            "mandatory": {"type": "boolean"},
            "content_type": {"type": "string", "minLength": 1},
        },
    }

    def __init__(self, config: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(config, context)
        self.url = check_url(str(config["url"]))
        self.safe_url = redact_url(self.url)
        self.exchange_name: str = config["exchange"]
        try:
            self.routing_key: Template = compile_template(
                config.get("routing_key", "{{trigger}}"), allowed_roots=_EVENT_FIELDS
            )
        except TemplateError as exc:
            raise ConfigError("routing_key", str(exc)) from None
        self.declare_exchange: bool = config.get("declare_exchange", False)
        self.exchange_type: str = config.get("exchange_type", "topic")
        self.persistent: bool = config.get("persistent", True)
        self.mandatory: bool = config.get("mandatory", True)
        self.content_type: str = config.get("content_type", "application/json")
        if self.exchange_name == "" and self.declare_exchange:
            raise ConfigError("declare_exchange", 'the default exchange "" always exists and cannot be declared')
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._lock = anyio.Lock()
        #: message id -> publish in flight; the channel matches returned messages by id, so ids must not overlap
        self._in_flight: dict[str, asyncio.Future[None]] = {}

    def guarantee(self) -> str:
        if self.mandatory and self.persistent:
            return "at least once into a queue: publisher confirms, mandatory, persistent"
        parts = [f"at least once {'into a queue' if self.mandatory else 'to the exchange'}: publisher confirms"]
        if not self.mandatory:
            parts.append("mandatory = false: the broker drops a message no queue is bound for")
        if not self.persistent:
            parts.append("persistent = false: a classic queue loses it on a broker restart")
        return "; ".join(parts)

    async def deliver(self, delivery: Delivery) -> None:
        (outcome,) = await self.deliver_batch([delivery])
        if outcome is not None:
            raise outcome

    async def deliver_batch(self, deliveries: Sequence[Delivery]) -> list[BaseException | None]:
        from event_router_amqp.errors import CONNECTION_ERRORS

        try:
            exchange = await self._ensure_exchange()
        except CONNECTION_ERRORS as exc:
            error = RetryableError(f"cannot publish to {self.safe_url}: {describe_error(exc)}")
            return [error] * len(deliveries)
        results = await asyncio.gather(*(self._publish(exchange, d) for d in deliveries), return_exceptions=True)
        outcomes: list[BaseException | None] = []
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancellation and the like are not a delivery's outcome
            outcomes.append(result if isinstance(result, BaseException) else None)
        return outcomes

    async def _publish(self, exchange: AbstractExchange, delivery: Delivery) -> None:
        import aio_pika
        import aiormq.exceptions
        from pamqp.commands import Basic

        from event_router_amqp.errors import CONNECTION_ERRORS

        event = delivery.event
        try:
            routing_key = self.routing_key.render(event.to_dict())
        except MissingValueError as exc:
            raise PermanentError(f"routing_key: {exc}") from None
        if len(routing_key.encode()) > 255:
            raise PermanentError(f"routing key longer than 255 bytes: {routing_key[:64]!r}...")
        message = aio_pika.Message(
            orjson.dumps(delivery.payload),
            content_type=self.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT if self.persistent else aio_pika.DeliveryMode.NOT_PERSISTENT,
            message_id=event.id,
            headers={"x-event-trigger": event.trigger, "x-event-id": event.id},
        )
        while (earlier := self._in_flight.get(event.id)) is not None:
            await asyncio.wait([earlier])
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._in_flight[event.id] = done
        try:
            await exchange.publish(message, routing_key=routing_key, mandatory=self.mandatory)
        except aiormq.exceptions.PublishError as exc:
            raise PermanentError(
                f"unroutable: no queue bound for routing key {routing_key!r} on exchange {self.exchange_name!r}",
                code="unroutable",
            ) from exc
        except aiormq.exceptions.DeliveryError as exc:
            if isinstance(exc.frame, Basic.Nack):
                raise RetryableError(f"the broker refused the message (basic.nack) for {routing_key!r}") from exc
            raise RetryableError(f"publish failed: {describe_error(exc)}") from exc
        except CONNECTION_ERRORS as exc:
            self._drop()
            raise RetryableError(f"publish to {self.safe_url} failed: {describe_error(exc)}") from exc
        finally:
            del self._in_flight[event.id]
            done.set_result(None)

    async def _ensure_exchange(self) -> AbstractExchange:
        import aio_pika

        from event_router_amqp import tolerant_decode

        # pamqp's tables are process-wide: decode as the input does, whichever of them connects first
        tolerant_decode.install()
        async with self._lock:
            if self._exchange is not None and self._channel is not None and not self._channel.is_closed:
                return self._exchange
            self._drop()
            connection = await aio_pika.connect(
                self.url,
                timeout=_CONNECT_TIMEOUT,
                client_properties={"connection_name": f"event-router output {self.name}"},
            )
            try:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                if self.declare_exchange:
                    exchange = await channel.declare_exchange(self.exchange_name, self.exchange_type, durable=True)
                else:
                    # passive check, as the Connector does: a missing exchange is an operator's mistake
                    exchange = await channel.get_exchange(self.exchange_name, ensure=bool(self.exchange_name))
            except BaseException:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await connection.close()
                raise
            connection.close_callbacks.add(self._on_close)
            self._connection, self._channel, self._exchange = connection, channel, exchange
            self.log.info("connected to the broker", extra={"url": self.safe_url, "exchange": self.exchange_name})
            return exchange

    def _on_close(self, _sender: Any, exc: BaseException | None = None) -> None:
        if exc is not None:
            self.log.warning(
                "lost the broker connection; reconnecting at the next delivery",
                extra={"url": self.safe_url, "error": describe_error(exc)},
            )
        self._channel = self._exchange = None

    def _drop(self) -> None:
        """Forget the connection (the next delivery opens a new one); closing it happens in the background."""
        connection, self._connection, self._channel, self._exchange = self._connection, None, None, None
        if connection is not None:
            connection.close_callbacks.discard(self._on_close)
        if connection is not None and not connection.is_closed:
            task = asyncio.get_running_loop().create_task(connection.close())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def close(self) -> None:
        connection, self._connection, self._channel, self._exchange = self._connection, None, None, None
        if connection is not None:
            connection.close_callbacks.discard(self._on_close)  # our own close is no lost connection
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await connection.close()

    def describe(self, delivery: Delivery) -> dict[str, Any]:
        routing_key: str | None = None
        error: str | None = None
        try:
            routing_key = self.routing_key.render(delivery.event.to_dict())
        except MissingValueError as exc:
            error = str(exc)
        out: dict[str, Any] = {
            "exchange": self.exchange_name,
            "routing_key": routing_key,
            "message_id": delivery.event.id,
            "headers": {"x-event-trigger": delivery.event.trigger, "x-event-id": delivery.event.id},
            "body": delivery.payload,
        }
        if error is not None:
            out["error"] = f"routing_key: {error}"
        return out
