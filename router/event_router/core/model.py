"""The router's configured parts as the core sees them: plain data that `event_router.config` builds from
router.toml. The core reads these and never imports the config package."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from event_router.api.plugin import Input, Output
from event_router.api.ratelimit import RateLimit
from event_router.api.retry import RetryPolicy
from event_router.api.secrets import Secret
from event_router.api.templates import Template
from event_router.core.gate import BreakerSettings
from event_router.core.routing import Matcher
from event_router.core.spool import SpoolSettings


@dataclass(frozen=True, slots=True)
class InputConfig:
    name: str
    type: str
    validation: Literal["strict", "warn", "off"]
    unknown_triggers: Literal["accept", "dead-letter"]
    #: the table as written, to tell on reload whether this input changed
    table: Mapping[str, Any]
    plugin: Input


@dataclass(frozen=True, slots=True)
class OutputConfig:
    name: str
    type: str
    concurrency: int
    retry: RetryPolicy
    timeout: float
    table: Mapping[str, Any]
    plugin: Output
    #: deliveries that may wait for this output (not yet delivered nor dead-lettered); past it, new ones
    #: are stored as dead letters (`output_backlog_full`) and the event goes on to its other outputs
    max_pending: int
    #: `rate_limit`: how fast the worker starts attempts, retries included (None: as fast as it can)
    rate_limit: RateLimit | None = None
    #: `breaker = {...}`: held open after consecutive failures (event_router.core.gate); None: no breaker
    breaker: BreakerSettings | None = None
    #: `ordering_key`: the deliveries of one rendered key reach this output one at a time, in store order
    #: (a route's own `ordering_key` takes precedence for its deliveries)
    ordering_key: Template | None = None


@dataclass(frozen=True, slots=True)
class RouteConfig:
    index: int
    name: str
    to: tuple[str, ...]
    stop: bool
    matcher: Matcher
    #: the match's trigger condition alone (None: the route may match any trigger)
    trigger_filter: Callable[[str], bool] | None
    #: the match without its trigger condition: enough for a route `routes_for` returned
    rest_matcher: Matcher
    reshape: Callable[[Mapping[str, Any]], Any] | None
    #: `retry` keys that override each target output's policy for this route's deliveries
    retry: Mapping[str, Any]
    #: route keys the core passes to outputs untouched (the Connector output's `action`)
    options: Mapping[str, Any]
    #: the `match` table as written (`check` looks at the triggers it names)
    match: Mapping[str, Any] = field(default_factory=dict)
    #: per output in `to`, the ordering key template of its deliveries (the route's `ordering_key`, else the
    #: output's); outputs without one are absent, so an unordered route's is empty
    ordering: Mapping[str, Template] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """`[router.telemetry]`: traces of each event's path, exported over OTLP/HTTP (event_router.core.telemetry,
    the `otel` extra). None on `RouterConfig` (the table absent) is telemetry off."""

    #: the collector's base URL ("http://127.0.0.1:4318"; the exporter adds /v1/traces); None: the standard
    #: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT variables, else the SDK's default
    endpoint: str | None = None
    service_name: str = "event-router"
    #: of the traces that start here (no sampled parent came with the event), the share recorded
    sample_ratio: float = 1.0
    #: sent with every export (credentials, a tenant): secrets, kept out of reprs
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """A validated router.toml with its plugins constructed (not yet opened)."""

    path: Path
    data_dir: Path
    schemas_dir: Path | None
    unmatched: Literal["drop", "dead-letter"]
    max_pending_events: int
    shutdown_timeout: float
    log_level: str
    retry: RetryPolicy
    #: (host, port) of the admin endpoint; None when `[router.admin]` is absent
    admin_listen: tuple[str, int] | None
    inputs: Mapping[str, InputConfig]
    outputs: Mapping[str, OutputConfig]
    routes: tuple[RouteConfig, ...]
    #: `[router.admin] unmask`: the admin endpoint may show events' data unmasked (`tap --unmask`, the console)
    admin_unmask: bool = False
    #: `[router.admin] token`: what the admin endpoint asks for (but on /healthz, /readyz and /metrics), a
    #: resolved secret; None: nothing is asked, which only a loopback `listen` allows
    admin_token: Secret | None = field(default=None, repr=False)
    #: seconds the spool keeps what each stored event announced (docs/recovery.md)
    announced_retention: float = 7 * 86400.0
    #: seconds the spool keeps an event after it was received, delivered or not, for `event-router replay`
    #: (0: none; an event is forgotten with its last delivery)
    retention: float = 0.0
    #: `[router] spool`: where the spool is (by default the SQLite file in data_dir)
    spool: SpoolSettings = field(default_factory=SpoolSettings)
    #: `[router.telemetry]`: None, telemetry off (the default)
    telemetry: TelemetrySettings | None = None
    #: things `check` reports without failing (plain-text secrets, no routes...)
    warnings: tuple[str, ...] = field(default=())
    #: key paths of the secret references left unresolved (`secrets="skip"`); empty for a config to run
    unresolved_secrets: tuple[str, ...] = field(default=())
    #: the routes indexed for the pipeline (built in __post_init__; a copy made by `replace` builds its own)
    table: RouteTable = field(init=False, repr=False, compare=False)
    #: each output's `max_pending`, as the spool's `store` takes them (built in __post_init__ too)
    backlog_limits: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "table", RouteTable(self.routes))
        object.__setattr__(self, "backlog_limits", {name: out.max_pending for name, out in self.outputs.items()})

    def route(self, name: str) -> RouteConfig | None:
        """The route called `name` (deliveries carry route names; looked up once per delivery)."""
        return self.table.by_name.get(name)

    def routes_for(self, trigger: str) -> tuple[RouteConfig, ...]:
        """The routes, in order, whose trigger condition admits `trigger`."""
        return self.table.routes_for(trigger)

    def retry_for(self, output: str, route: str) -> RetryPolicy:
        """The policy of `output`, with the named route's `retry` overrides applied. An output this
        configuration lacks (a reload removed it while its last deliveries finish) gets the router's `retry`."""
        if output not in self.outputs:
            return self.retry
        policy = self.outputs[output].retry
        found = self.route(route)
        return policy.merged(found.retry) if found is not None and found.retry else policy

    def route_options(self, route: str) -> Mapping[str, Any]:
        """What the named route passes to its outputs (`action`...); nothing for a route a reload removed."""
        found = self.route(route)
        return found.options if found is not None else {}


class RouteTable:
    """The routes by name, and the routes each trigger may match (cached per trigger, bounded)."""

    #: per-relationship triggers are unbounded: the cache is cleared when it reaches this size
    MAX_CACHED_TRIGGERS = 4096

    def __init__(self, routes: tuple[RouteConfig, ...]) -> None:
        self.routes = routes
        self.by_name = {r.name: r for r in routes}
        self._candidates: dict[str, tuple[RouteConfig, ...]] = {}

    def routes_for(self, trigger: str) -> tuple[RouteConfig, ...]:
        found = self._candidates.get(trigger)
        if found is None:
            if len(self._candidates) >= self.MAX_CACHED_TRIGGERS:
                self._candidates.clear()
            found = tuple(r for r in self.routes if r.trigger_filter is None or r.trigger_filter(trigger))
            self._candidates[trigger] = found
        return found
