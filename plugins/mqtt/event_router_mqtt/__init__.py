"""MQTT input for enmeshed-event-router (`type = "mqtt"`).

Subscribes to the topics the Connector's messageBrokerPublisher publishes to (its event namespaces with
`.` replaced by `/`) and turns each message into an event. See docs/plugins/mqtt.md of the router.
"""

from __future__ import annotations

from event_router.api import Input, hookimpl
from event_router_mqtt.input import MqttInput

__all__ = ["MqttInput"]


@hookimpl
def event_router_input_types() -> list[type[Input]]:
    return [MqttInput]
