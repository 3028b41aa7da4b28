"""AMQP (RabbitMQ) plugin for enmeshed-event-router: the broker path the Connector's docs recommend.

`type = "amqp"` input: consumes the queue bound to the exchange the Connector's messageBrokerPublisher
publishes to (routing key = event namespace, body = the event's data as JSON). `type = "amqp"` output:
publishes routed events to an exchange with publisher confirms.
"""

from __future__ import annotations

from event_router.api import Input, Output, hookimpl
from event_router_amqp.input import AmqpInput
from event_router_amqp.output import AmqpOutput

__all__ = ["AmqpInput", "AmqpOutput"]


@hookimpl
def event_router_input_types() -> list[type[Input]]:
    return [AmqpInput]


@hookimpl
def event_router_output_types() -> list[type[Output]]:
    return [AmqpOutput]
