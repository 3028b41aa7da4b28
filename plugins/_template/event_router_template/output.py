"""Output `stdout`: prints each delivery as one JSON line on the router's stdout."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import orjson

from event_router.api import Delivery, Output, PluginContext


class StdoutOutput(Output):
    """Prints each delivery as one JSON line on the router's stdout (`type = "stdout"`).

    Handy while writing routes: run the router in a terminal and watch what a route sends.
    """

    type_name = "stdout"
    # Your plugin's keys only; the core owns `type`, `concurrency`, `retry`, `timeout` and `max_pending`.
    config_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"prefix": {"type": "string", "description": "text printed before each line"}},
    }

    def __init__(self, config: Mapping[str, Any], context: PluginContext) -> None:
        # Constructors must be cheap and must not do I/O: `event-router check` constructs plugins too.
        super().__init__(config, context)
        self.prefix: str = config.get("prefix", "")

    def guarantee(self) -> str:
        # Optional; without it `event-router check` says "unknown: the plugin does not say".
        return "at least once to the router's stdout: written and flushed; nothing confirms that a reader kept it"

    async def deliver(self, delivery: Delivery) -> None:
        # Raise RetryableError / PermanentError (event_router.api) on failure; return when delivered.
        line = orjson.dumps({"route": delivery.route, "id": delivery.event.id, "body": delivery.payload})
        sys.stdout.write(self.prefix + line.decode() + "\n")
        sys.stdout.flush()
