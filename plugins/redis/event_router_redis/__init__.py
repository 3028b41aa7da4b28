"""Redis input for enmeshed-event-router (`type = "redis"`).

Subscribes to the channels the Connector's messageBrokerPublisher PUBLISHes to (mode `pubsub`), or reads
a stream of its events through a consumer group (mode `stream`, the durable option). See
docs/plugins/redis.md of the router.
"""

from __future__ import annotations

from event_router.api import Input, hookimpl
from event_router_redis.input import RedisInput

__all__ = ["RedisInput"]


@hookimpl
def event_router_input_types() -> list[type[Input]]:
    return [RedisInput]
