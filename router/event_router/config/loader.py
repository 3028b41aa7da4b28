"""router.toml: the one loader. It reads the file, checks it against the schema of its own tables
(`config.schema`) and each plugin's table against the schema the plugin ships, resolves secret references
(`config.secrets`), constructs the plugins and compiles the routes into the core's plain data
(`event_router.core.model`).

Every error is a breadcrumb to the exact key: `router.toml: outputs.crm.retry.max_attempts: 0 is less
than the minimum of 1 (plugin http)` (`config.wording`). Errors never repeat a secret; what a plugin says
about its table is scrubbed of the secrets resolved for it.

`secrets="skip"` loads a file for commands that send nothing (see `config.secrets`): such a configuration
lists its stand-ins in `unresolved_secrets`, and `App` refuses it. `secrets="spool"` is the same but for
the spool's connection string, which the commands that open the spool need.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from event_router.api.durations import parse_duration
from event_router.api.errors import ConfigError, RouterError
from event_router.api.listen import format_listen, is_loopback, parse_listen
from event_router.api.plugin import Input, Output, PluginContext
from event_router.api.ratelimit import RateLimit
from event_router.api.retry import RetryPolicy
from event_router.api.secrets import PLACEHOLDER, Secret, Unresolved, scrub, url_secrets
from event_router.api.templates import Template
from event_router.config.schema import (
    INPUT_CORE_KEYS,
    OUTPUT_CORE_KEYS,
    ROUTE_KEYS,
    ROUTER_SCHEMA,
    TELEMETRY_SCHEMA,
)
from event_router.config.secrets import (
    PLAIN_TEXT_ADVICE,
    SecretError,
    SecretsMode,
    resolve_secret,
    resolve_table,
    secrets_in,
)
from event_router.config.wording import schema_errors
from event_router.core.gate import BreakerSettings
from event_router.core.model import InputConfig, OutputConfig, RouteConfig, RouterConfig, TelemetrySettings
from event_router.core.routing import (
    PatternError,
    compile_match,
    compile_ordering_key,
    compile_reshape,
    compile_source_filter,
    compile_trigger_filter,
)
from event_router.core.spool import SpoolSettings
from event_router.core.spool.backend import NEEDS_EXTRA, dsn_has_password, dsn_problem
from event_router.plugin_loader import PluginRegistry

#: `[router] max_pending_events`: the spool's hard bound on pending events, a guard for its disk
DEFAULT_MAX_PENDING_EVENTS = 1_000_000
#: an output's `max_pending`: the backlogs of up to nine outputs down at once stay below
#: DEFAULT_MAX_PENDING_EVENTS (from ten, `check` warns: `_backlogs_within`)
DEFAULT_MAX_PENDING = 100_000
#: `[router] spool.lease`: how long a delivery handed to one router is its own without the router renewing it
DEFAULT_LEASE = 30.0
#: an output's breaker cool-down shorter than this would probe a receiver that is down all the time
MIN_COOL_DOWN = 0.1
#: `[router.admin] token`: the fewest characters; a short one could be guessed by trying
MIN_ADMIN_TOKEN = 16
#: the shortest lease: a router renews its leases every third of one, and its writer looks about every
#: second, so a shorter lease could run out under a live router and another would deliver the same at once
MIN_LEASE = 3.0
#: what a router without the `otel` extra says when its config has `[router.telemetry]`
NEEDS_OTEL_EXTRA = (
    "telemetry needs the OpenTelemetry SDK and its OTLP exporter: install enmeshed-event-router[otel] "
    "(opentelemetry-sdk, opentelemetry-exporter-otlp-proto-http) beside the router"
)


class ConfigErrors(RouterError):
    """Everything wrong with one router.toml, each a `ConfigError` with its key path."""

    def __init__(self, errors: Sequence[ConfigError], *, unresolved: Sequence[str] = ()):
        self.errors = list(errors)
        #: key paths of the secrets that could not be resolved (an unset variable, no credentials directory)
        self.unresolved = tuple(unresolved)
        super().__init__("\n".join(str(e) for e in self.errors))


def load_config(
    path: Path | str,
    registry: PluginRegistry,
    *,
    logger: logging.Logger | None = None,
    secrets: SecretsMode = "resolve",
    credentials_dir: Path | None = None,
    plugin_data_dir: Path | None = None,
) -> RouterConfig:
    """Read, validate and build `path`. Raises `ConfigErrors` listing every problem found.

    `secrets="skip"`: references are not resolved (see the module's doc). `credentials_dir`: where
    `{ credential = ... }` secrets are read instead of `$CREDENTIALS_DIRECTORY`. `plugin_data_dir`: the
    `data_dir` the plugins are given instead of the file's (a reload's: the running router keeps its own);
    the config still names the file's.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigErrors([ConfigError("", f"cannot read {str(path)!r}: {exc.strerror}", file=path.name)]) from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigErrors([ConfigError("", f"not valid TOML: {exc}", file=path.name)]) from exc
    return build_config(
        document,
        path=path,
        registry=registry,
        logger=logger,
        secrets=secrets,
        credentials_dir=credentials_dir,
        plugin_data_dir=plugin_data_dir,
    )


def build_config(
    document: Mapping[str, Any],
    *,
    path: Path,
    registry: PluginRegistry,
    logger: logging.Logger | None = None,
    secrets: SecretsMode = "resolve",
    credentials_dir: Path | None = None,
    plugin_data_dir: Path | None = None,
) -> RouterConfig:
    """Validate a parsed router.toml document and construct its plugins (`load_config`)."""
    loader = _Loader(
        path,
        registry,
        logger or logging.getLogger("event_router"),
        secrets,
        credentials_dir,
        plugin_data_dir=plugin_data_dir,
    )
    return loader.build(document)


class _Loader:
    def __init__(
        self,
        path: Path,
        registry: PluginRegistry,
        logger: logging.Logger,
        secrets: SecretsMode = "resolve",
        credentials_dir: Path | None = None,
        *,
        plugin_data_dir: Path | None = None,
    ):
        self.path = path
        self.file = path.name
        self.base_dir = path.resolve().parent
        self.registry = registry
        self.logger = logger
        self.secrets = secrets
        self.credentials_dir = credentials_dir
        #: the data_dir the plugins are given, when not the file's (`load_config`)
        self.plugin_data_dir = plugin_data_dir
        self.errors: list[ConfigError] = []
        self.warnings: list[str] = []
        #: key paths of secrets that cannot be resolved (errors)
        self.unresolved: list[str] = []
        #: key paths of secrets left unresolved on purpose (`secrets="skip"`)
        self.skipped: list[str] = []

    def fail(self) -> ConfigErrors:
        return ConfigErrors(self.errors, unresolved=self.unresolved)

    def error(self, key: str, message: str, plugin: str | None = None) -> None:
        self.errors.append(ConfigError(key, message, plugin=plugin, file=self.file))

    def build(self, document: Mapping[str, Any]) -> RouterConfig:
        for err in schema_errors(ROUTER_SCHEMA, document):
            self.error(*err)
        if self.errors:
            raise self.fail()
        router = document.get("router", {})
        data_dir = self.base_dir / router.get("data_dir", "var")
        schemas_dir = self.base_dir / router["schemas_dir"] if "schemas_dir" in router else None
        if schemas_dir is not None and not schemas_dir.is_dir():
            self.error("router.schemas_dir", f"{str(schemas_dir)!r} is not a directory")
        default_retry = RetryPolicy().merged(router.get("retry", {}))
        spool = self._spool(router.get("spool"))
        telemetry = self._telemetry(router["telemetry"]) if "telemetry" in router else None
        plugin_data_dir = self.plugin_data_dir or data_dir
        admin_listen = None
        admin_token = None
        if "admin" in router:
            try:
                admin_listen = parse_listen(router["admin"].get("listen", "127.0.0.1:9187"))
            except ValueError as exc:
                self.error("router.admin.listen", str(exc))
            admin_token = self._admin_token(router["admin"], admin_listen)
        inputs = {
            name: cfg
            for name, table in document.get("inputs", {}).items()
            if (cfg := self._input(name, table, plugin_data_dir)) is not None
        }
        outputs = {
            name: out
            for name, table in document.get("outputs", {}).items()
            if (out := self._output(name, table, plugin_data_dir, default_retry)) is not None
        }
        routes = self._routes(document.get("routes", []), document.get("outputs", {}), outputs)
        self._covered(inputs, document.get("inputs", {}), routes)
        self._listeners_apart(document.get("inputs", {}), admin_listen)
        if not routes:
            self.warnings.append(f"{self.file}: routes: no route configured: every event is unmatched")
        max_pending_events = router.get("max_pending_events", DEFAULT_MAX_PENDING_EVENTS)
        self._backlogs_within(outputs, max_pending_events)
        targets = {target for route in routes for target in route.to}
        for name in outputs:
            if name not in targets:
                self.warnings.append(
                    f"{self.file}: outputs.{name}: no route sends to this output: it receives nothing "
                    f"(add it to a route's `to`, or remove it)"
                )
        if self.errors:
            raise self.fail()
        return RouterConfig(
            path=self.path,
            data_dir=data_dir,
            schemas_dir=schemas_dir,
            unmatched=router.get("unmatched", "drop"),
            max_pending_events=max_pending_events,
            shutdown_timeout=parse_duration(router.get("shutdown_timeout", 10)),
            announced_retention=parse_duration(router.get("announced_retention", "7d")),
            retention=parse_duration(router.get("retention", 0)),
            log_level=router.get("log_level", "info"),
            retry=default_retry,
            admin_listen=admin_listen,
            admin_unmask=bool(router.get("admin", {}).get("unmask", False)),
            admin_token=admin_token,
            spool=spool,
            telemetry=telemetry,
            inputs=inputs,
            outputs=outputs,
            routes=tuple(routes),
            warnings=tuple(self.warnings),
            unresolved_secrets=tuple(self.skipped),
        )

    def _spool(self, table: Mapping[str, Any] | None) -> SpoolSettings:
        """`[router] spool`: where the spool is. None (or backend "sqlite"): the SQLite file in data_dir."""
        key = "router.spool"
        if table is None:
            return SpoolSettings()
        if table.get("backend", "sqlite") == "sqlite":
            for extra in ("dsn", "lease"):
                if extra in table:
                    self.error(f"{key}.{extra}", 'only for backend = "postgresql" (the SQLite spool is in data_dir)')
            return SpoolSettings()
        lease = parse_duration(table.get("lease", DEFAULT_LEASE))
        if lease < MIN_LEASE:
            self.error(
                f"{key}.lease",
                f"{lease:g}s is shorter than {MIN_LEASE:g}s: a live router's leases could run out between its "
                "renewals and another router would send the same deliveries at once",
            )
        if "dsn" not in table:
            self.error(
                f"{key}.dsn",
                'missing: the PostgreSQL spool needs its connection string, e.g. dsn = { env = "ROUTER_PG_DSN" }',
            )
            return SpoolSettings("postgresql", None, lease)
        reference = table["dsn"]
        if self.secrets in ("skip", "admin") and isinstance(reference, Mapping):
            self.skipped.append(f"{key}.dsn")
            return SpoolSettings("postgresql", None, lease)
        try:
            dsn, plain = resolve_secret(reference, base_dir=self.base_dir, credentials_dir=self.credentials_dir)
        except SecretError as exc:
            needed = (
                " (status, dlq, replay, output and check --connect read the spool's database: of the secrets, "
                "they need this one)"
            )
            self.error(f"{key}.dsn", str(exc) + (needed if self.secrets == "spool" else ""))
            self.unresolved.append(f"{key}.dsn")
            return SpoolSettings("postgresql", None, lease)
        problem = dsn_problem(dsn)
        if problem is not None:
            self.error(f"{key}.backend" if problem == NEEDS_EXTRA else f"{key}.dsn", problem)
        elif plain and dsn_has_password(dsn):
            self.warnings.append(f"{self.file}: {key}.dsn: {PLAIN_TEXT_ADVICE}")
        return SpoolSettings("postgresql", dsn, lease)

    def _telemetry(self, table: Mapping[str, Any]) -> TelemetrySettings | None:
        """`[router.telemetry]`: traces over OTLP/HTTP. The SDK (the `otel` extra) is imported here, once a
        config asks for it, so that a router without it refuses the config at load, naming the extra."""
        key = "router.telemetry"
        try:
            from event_router.core import telemetry  # noqa: F401
        except ImportError:
            self.error(key, NEEDS_OTEL_EXTRA)
            return None
        found = resolve_table(
            TELEMETRY_SCHEMA,
            table,
            key,
            mode=self.secrets,
            base_dir=self.base_dir,
            credentials_dir=self.credentials_dir,
        )
        for where, message in found.errors:
            self.error(where, message)
            self.unresolved.append(where)
        self.warnings.extend(f"{self.file}: {where}: {PLAIN_TEXT_ADVICE}" for where in found.plain)
        self.skipped.extend(found.skipped)
        if found.table is None:
            return None
        return TelemetrySettings(
            endpoint=found.table.get("endpoint"),
            # unset: the standard variable, as for the endpoint, else the router's name
            service_name=found.table.get("service_name") or os.environ.get("OTEL_SERVICE_NAME") or "event-router",
            sample_ratio=float(found.table.get("sample_ratio", 1.0)),
            headers={str(k): v for k, v in found.table.get("headers", {}).items()},
        )

    def _admin_token(self, table: Mapping[str, Any], listen: tuple[str, int] | None) -> Secret | None:
        """`[router.admin] token`, resolved (in modes "resolve" and "admin"). Off the loopback it is required:
        the endpoint pauses outputs, replays and purges dead letters and shows events, and anyone who can reach
        the address could do so."""
        key = "router.admin.token"
        if "token" not in table:
            if listen is not None and not is_loopback(listen[0]):
                self.error(
                    key,
                    f"required: the admin endpoint listens on {format_listen(*listen)}, off the loopback, where "
                    "anyone who reaches it could pause outputs and replay or purge dead letters; set token = "
                    '{ env = "ROUTER_ADMIN_TOKEN" } (or listen on 127.0.0.1)',
                )
            return None
        reference = table["token"]
        if self.secrets not in ("resolve", "admin") and isinstance(reference, Mapping):
            self.skipped.append(key)
            return Unresolved(PLACEHOLDER)
        try:
            token, plain = resolve_secret(reference, base_dir=self.base_dir, credentials_dir=self.credentials_dir)
        except SecretError as exc:
            needed = " (tap and reload call the admin endpoint, which asks for it)" if self.secrets == "admin" else ""
            self.error(key, str(exc) + needed)
            self.unresolved.append(key)
            return None
        if len(token) < MIN_ADMIN_TOKEN:
            self.error(key, f"too short: {len(token)} characters; use {MIN_ADMIN_TOKEN} or more (openssl rand -hex 32)")
        if plain:
            self.warnings.append(f"{self.file}: {key}: {PLAIN_TEXT_ADVICE}")
        return token

    def _backlogs_within(self, outputs: Mapping[str, OutputConfig], max_pending_events: int) -> None:
        """Pending events are at most the outputs' pending deliveries, each output held to its `max_pending`:
        while those add up to less than `max_pending_events`, outputs that are down park what is beyond
        their limits and the spool never refuses an input. When they add up to it or more, they can fill
        the spool, and then every input refuses (a webhook answers 503, which the Connector never retries)."""
        total = sum(out.max_pending for out in outputs.values())
        if outputs and total >= max_pending_events:
            self.warnings.append(
                f"{self.file}: router.max_pending_events: the outputs' max_pending add up to {total:_}, not less "
                f"than max_pending_events ({max_pending_events:_}): backlogs of outputs that are down could fill "
                "the spool, and then every input refuses events (a webhook answers 503, which the Connector "
                "does not retry); lower the outputs' max_pending or raise max_pending_events"
            )

    def _covered(self, inputs: Mapping[str, InputConfig], tables: Mapping[str, Any], routes: list[RouteConfig]) -> None:
        """An input that rebuilds missed events (`Input.rebuilds`) names the live input it stands in for with
        `covers`: that input must be configured and live. Without `covers` its events carry its own name, and
        a route whose `source` admits some input but not it never takes them: said as a warning."""
        covering: dict[str, str] = {}
        for name, source in inputs.items():
            covered = source.plugin.covers()
            key = f"inputs.{name}.covers"
            if covered is None:
                if not source.plugin.rebuilds:
                    continue
                for route in routes:
                    admits = compile_source_filter(route.match)
                    if admits is not None and not admits(name):
                        self.warnings.append(
                            f"{self.file}: routes[{route.index}].match.source: does not admit input {name!r}, "
                            f"so the events it rebuilds never take this route: set {key} to the input whose "
                            "missed events it rebuilds, and they are routed as from it"
                        )
            elif covered == name:
                self.error(key, "an input cannot cover itself: name the live input whose events it rebuilds")
            elif covered not in tables:
                self.error(key, f"no input named {covered!r} (inputs: {', '.join(tables)})")
            elif covered in inputs and inputs[covered].plugin.rebuilds:
                self.error(key, f"{covered!r} rebuilds missed events itself: name a live input")
            elif covered in covering:
                self.error(
                    key,
                    f"input {covered!r} is covered by {covering[covered]!r} already: one input rebuilds what it missed",
                )
            else:
                covering[covered] = name

    def _listeners_apart(self, inputs: Mapping[str, Any], admin_listen: tuple[str, int] | None) -> None:
        """Two listeners of this file (inputs' `listen`, `[router.admin] listen`) on one port: the second
        could not bind, or with SO_REUSEPORT would take half of the first one's requests. A wildcard host
        (0.0.0.0, ::) covers every address, so it overlaps any host on the same port. Port 0 (any free
        port) never overlaps."""
        listeners: list[tuple[str, str, int]] = []
        for name, table in inputs.items():
            if isinstance(table, Mapping) and isinstance(table.get("listen"), str):
                try:
                    listeners.append((f"inputs.{name}.listen", *parse_listen(table["listen"])))
                except ValueError:
                    continue  # the input's plugin reports the malformed address
        if admin_listen is not None:
            listeners.append(("router.admin.listen", *admin_listen))
        wildcard = {"0.0.0.0", "::", ""}
        for i, (key, host, port) in enumerate(listeners):
            for other_key, other_host, other_port in listeners[:i]:
                if port != 0 and port == other_port and (host == other_host or {host, other_host} & wildcard):
                    self.error(
                        key,
                        f"{format_listen(host, port)} overlaps {other_key} ({format_listen(other_host, other_port)}): "
                        "each listener needs its own port",
                    )

    def _input(self, name: str, table: Mapping[str, Any], data_dir: Path) -> InputConfig | None:
        key = f"inputs.{name}"
        cls = self._plugin_class(key, table["type"], self.registry.inputs, "input")
        if cls is None:
            return None
        plugin = self._construct(key, cls, table, INPUT_CORE_KEYS, name, data_dir)
        if plugin is None:
            return None
        return InputConfig(
            name=name,
            type=table["type"],
            validation=table.get("validation", "strict"),
            unknown_triggers=table.get("unknown_triggers", "accept"),
            table=table,
            plugin=plugin,
        )

    def _output(
        self, name: str, table: Mapping[str, Any], data_dir: Path, default_retry: RetryPolicy
    ) -> OutputConfig | None:
        key = f"outputs.{name}"
        cls = self._plugin_class(key, table["type"], self.registry.outputs, "output")
        if cls is None:
            return None
        ordering_key = self._ordering_key(f"{key}.ordering_key", table)
        plugin = self._construct(key, cls, table, OUTPUT_CORE_KEYS, name, data_dir)
        if plugin is None:
            return None
        return OutputConfig(
            name=name,
            type=table["type"],
            concurrency=table.get("concurrency", 8),
            retry=default_retry.merged(table.get("retry", {})),
            timeout=parse_duration(table.get("timeout", 30)),
            table=table,
            plugin=plugin,
            max_pending=table.get("max_pending", DEFAULT_MAX_PENDING),
            rate_limit=RateLimit.from_table(table["rate_limit"]) if "rate_limit" in table else None,
            breaker=self._breaker(f"{key}.breaker", table.get("breaker", False)),
            ordering_key=ordering_key,
        )

    def _breaker(self, key: str, value: bool | Mapping[str, Any]) -> BreakerSettings | None:
        """An output's `breaker`: false (none: the default), true (5 failures, 30 s) or a table of either key."""
        if value is False:
            return None
        if value is True:
            return BreakerSettings()
        defaults = BreakerSettings()
        settings = BreakerSettings(
            failures=value.get("failures", defaults.failures),
            cool_down=parse_duration(value.get("cool_down", defaults.cool_down)),
        )
        if settings.cool_down < MIN_COOL_DOWN:
            self.error(f"{key}.cool_down", f"{settings.cool_down:g}s is shorter than {MIN_COOL_DOWN:g}s")
        return settings

    def _ordering_key(self, key: str, table: Mapping[str, Any]) -> Template | None:
        """A route's or output's `ordering_key`, compiled (None when absent or wrong: the error is recorded)."""
        if "ordering_key" not in table:
            return None
        template: Template | None = self._compile(key, compile_ordering_key, table["ordering_key"])
        return template

    def _plugin_class(self, key: str, type_name: str, available: Mapping[str, Any], kind: str) -> Any:
        cls = available.get(type_name)
        if cls is None:
            known = ", ".join(sorted(available)) or "none"
            self.error(
                f"{key}.type",
                f"unknown {kind} type {type_name!r} (installed: {known}; `event-router plugins` lists them)",
            )
        return cls

    def _construct(
        self,
        key: str,
        cls: type[Input] | type[Output],
        table: Mapping[str, Any],
        core_keys: Iterable[str],
        name: str,
        data_dir: Path,
    ) -> Any:
        plugin_label = cls.type_name
        own = {k: v for k, v in table.items() if k not in core_keys}
        errors = schema_errors(cls.config_schema, own, core_keys=tuple(core_keys))
        for sub, message in errors:
            self.error(f"{key}.{sub}" if sub else key, message, plugin_label)
        if errors:
            return None
        found = resolve_table(
            cls.config_schema,
            own,
            key,
            mode=self.secrets,
            base_dir=self.base_dir,
            credentials_dir=self.credentials_dir,
        )
        for where, message in found.errors:
            self.error(where, message, plugin_label)
            self.unresolved.append(where)
        self.warnings.extend(f"{self.file}: {where}: {PLAIN_TEXT_ADVICE}" for where in found.plain)
        self.skipped.extend(found.skipped)
        resolved = found.table
        if resolved is None:
            return None
        context = PluginContext(
            name=name,
            data_dir=data_dir,
            logger=self.logger.getChild(f"{key}"),
            config_dir=self.base_dir,
        )
        # a plugin's message may quote a value it was given: the secrets it was given are cut out
        hidden = [
            text
            for secret in secrets_in(resolved)
            if not isinstance(secret, Unresolved)
            for text in (secret, *url_secrets(secret))
        ]
        try:
            plugin = cls(resolved, context)
        except ConfigError as exc:
            self.error(f"{key}.{exc.path}" if exc.path else key, scrub(exc.message, hidden), plugin_label)
        except (ValueError, TypeError) as exc:
            self.error(key, scrub(str(exc), hidden), plugin_label)
        else:
            for sub, message in plugin.config_warnings():
                self.warnings.append(f"{self.file}: {key}{'.' + sub if sub else ''}: {scrub(message, hidden)}")
            return plugin
        return None

    def _routes(
        self, tables: Sequence[Mapping[str, Any]], outputs: Mapping[str, Any], built: Mapping[str, OutputConfig]
    ) -> list[RouteConfig]:
        routes: list[RouteConfig] = []
        seen: dict[str, int] = {}
        for index, table in enumerate(tables):
            key = f"routes[{index}]"
            name = table["name"]
            if name in seen:
                self.error(f"{key}.name", f"route name {name!r} is already used by routes[{seen[name]}]")
            seen[name] = index
            to = (table["to"],) if isinstance(table["to"], str) else tuple(table["to"])
            for i, target in enumerate(to):
                if target not in outputs:
                    known = ", ".join(sorted(outputs)) or "none"
                    self.error(f"{key}.to[{i}]", f"no output named {target!r} (outputs: {known})")
            options = {k: v for k, v in table.items() if k not in ROUTE_KEYS}
            for target in dict.fromkeys(t for t in to if t in outputs):
                cls = self.registry.outputs.get(outputs[target].get("type", ""))
                if cls is not None:
                    for sub, message in cls.check_route_options(options, outputs[target]):
                        self.error(f"{key}.{sub}", message, cls.type_name)
            matcher = self._compile(f"{key}.match", compile_match, table.get("match", {}))
            reshape = self._compile(f"{key}.reshape", compile_reshape, table["reshape"]) if "reshape" in table else None
            own_key = self._ordering_key(f"{key}.ordering_key", table)
            ordering = {
                target: template
                for target in to
                if (template := own_key or (built[target].ordering_key if target in built else None)) is not None
            }
            if matcher is None:
                continue
            spec = table.get("match", {})
            trigger_filter = compile_trigger_filter(spec)
            rest = compile_match({k: v for k, v in spec.items() if k != "trigger"}) if trigger_filter else matcher
            routes.append(
                RouteConfig(
                    index=index,
                    name=name,
                    to=to,
                    stop=table.get("stop", False),
                    matcher=matcher,
                    trigger_filter=trigger_filter,
                    rest_matcher=rest,
                    reshape=reshape,
                    retry=table.get("retry", {}),
                    options=options,
                    match=spec,
                    ordering=ordering,
                )
            )
        return routes

    def _compile(self, key: str, compiler: Callable[[Mapping[str, Any]], Any], spec: Mapping[str, Any]) -> Any:
        try:
            return compiler(spec)
        except PatternError as exc:
            self.error(f"{key}.{exc.path}" if exc.path else key, exc.message)
            return None
