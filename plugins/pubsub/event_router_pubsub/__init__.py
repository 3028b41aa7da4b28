"""Google Cloud Pub/Sub input for enmeshed-event-router (`type = "pubsub"`).

Pulls what the Connector's `messageBrokerPublisher` PubSub broker publishes: per event, the JSON of the
event's data with one attribute, `namespace` (the trigger). See docs/plugins/pubsub.md.
"""

from __future__ import annotations

from event_router.api import Input, hookimpl
from event_router_pubsub.input import PubSubInput

__all__ = ["PubSubInput"]


@hookimpl
def event_router_input_types() -> list[type[Input]]:
    return [PubSubInput]
