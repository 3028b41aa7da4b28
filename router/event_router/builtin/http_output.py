"""Built-in output `http`: POSTs JSON to a URL, and classifies failures for the retry policy."""

from __future__ import annotations

from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from time import time
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import orjson
from yarl import URL

from event_router import __version__
from event_router.errors import ConfigError, PermanentError, RetryableError
from event_router.hookspecs import hookimpl
from event_router.plugin import Delivery, Output, PluginContext
from event_router.secrets import SECRET_SCHEMA
from event_router.templates import Template, TemplateError, compile_template

#: event fields a URL template may use (in the path and query only)
URL_TEMPLATE_ROOTS = ("trigger", "id", "source", "data", "meta")
#: statuses worth trying again: the receiver may recover
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def _quote(value: str) -> str:
    # safe="" so a value from an event can never add a path segment, a query or a fragment
    return quote(value, safe="")


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds, from either of its forms (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time())
    except (TypeError, ValueError):
        return None


class HttpOutput(Output):
    """POSTs each delivery as JSON (`type = "http"`).

    Body: the normalised event, or the route's reshaped payload. Headers: `Content-Type:
    application/json`, `Idempotency-Key: <event id>` (delivery is at-least-once: receivers drop
    duplicates by it), `X-Event-Trigger`, and the configured static headers. 2xx is success; 408, 425,
    429 (honouring Retry-After), 5xx, timeouts and connection errors are retried; any other status is
    permanent and goes to the dead letters. Redirects are not followed.
    """

    type_name = "http"
    config_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["url"],
        "properties": {
            "url": {
                "type": "string",
                "pattern": "^https?://",
                "description": "may contain {{trigger}} etc. in the path",
            },
            "method": {"enum": ["POST", "PUT"]},
            "headers": {"type": "object", "additionalProperties": SECRET_SCHEMA},
        },
    }

    def __init__(self, config: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(config, context)
        url: str = config["url"]
        split = urlsplit(url.replace("{{", "\x00").replace("}}", "\x01"))
        if "\x00" in split.netloc:
            raise ConfigError(
                "url", "the host part of the URL cannot contain a template: event data must not pick the host"
            )
        if not split.hostname:
            raise ConfigError("url", f"{url!r} has no host")
        try:
            self.url: Template = compile_template(url, allowed_roots=URL_TEMPLATE_ROOTS)
        except TemplateError as exc:
            raise ConfigError("url", str(exc)) from exc
        self.method = config.get("method", "POST")
        self.headers = {str(k): str(v) for k, v in config.get("headers", {}).items()}
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            headers={"User-Agent": f"enmeshed-event-router/{__version__}", **self.headers},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url_for(self, delivery: Delivery) -> str:
        try:
            return self.url.render(delivery.event.to_dict(), quote=_quote)
        except Exception as exc:  # a field the URL needs is missing from this event: no retry can add it
            raise PermanentError(f"cannot build URL: {exc}") from exc

    async def deliver(self, delivery: Delivery) -> None:
        assert self._session is not None, "open() was not called"
        url = self.url_for(delivery)
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": delivery.event.id,
            "X-Event-Trigger": delivery.event.trigger,
        }
        try:
            # encoded=True: send the URL exactly as built, values percent-encoded by us
            async with self._session.request(
                self.method,
                URL(url, encoded=True),
                data=orjson.dumps(delivery.payload),
                headers=headers,
                allow_redirects=False,
            ) as response:
                if 200 <= response.status < 300:
                    await response.read()
                    return
                text = (await response.text(errors="replace"))[:300]
                message = f"{self.method} {url} answered {response.status}" + (f": {text}" if text else "")
                if response.status in RETRYABLE_STATUS or response.status >= 500:
                    raise RetryableError(message, retry_after=retry_after_seconds(response.headers.get("Retry-After")))
                raise PermanentError(message, code=str(response.status))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise RetryableError(f"{self.method} {url} failed: {type(exc).__name__}: {exc}") from exc

    def describe(self, delivery: Delivery) -> dict[str, Any]:
        return {"method": self.method, "url": self.url_for(delivery), "body": delivery.payload}


@hookimpl
def event_router_output_types() -> list[type[Output]]:
    return [HttpOutput]
