"""router.toml: the one loader. It owns the schema of `[router]` and `[[routes]]` and the keys the core
reads in every plugin table; each plugin's own keys are checked against the schema the plugin ships.

Every error is a breadcrumb to the exact key: `router.toml: outputs.crm.retry.max_attempts: 0 is less
than the minimum of 1 (plugin http)`. Errors never repeat a secret: a value of the wrong type is described,
not quoted; nothing in a table that holds secrets (`auth`, `headers`, `signing_secrets`...) is quoted; a
URL is shown with its password masked; and what a plugin says about its table is scrubbed of the secrets
resolved for it.

`secrets="skip"` loads a file for commands that send nothing (`test`, `status`, `dlq`, `check --no-secrets`):
references are checked for shape but not resolved, and stand-ins take their place
(event_router.api.secrets). Such a configuration lists them in `unresolved_secrets`, and `App` refuses it.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from event_router.api.durations import DURATION_SCHEMA, parse_duration
from event_router.api.errors import ConfigError, RouterError, closest
from event_router.api.listen import parse_listen
from event_router.api.plugin import Input, Output, PluginContext
from event_router.api.retry import RETRY_SCHEMA, RetryPolicy
from event_router.api.secrets import (
    PLACEHOLDER,
    Secret,
    SecretError,
    Unresolved,
    redact_url,
    resolve_secret,
    scrub,
    url_secrets,
)
from event_router.core.model import InputConfig, OutputConfig, RouteConfig, RouterConfig
from event_router.core.routing import PatternError, compile_match, compile_reshape, compile_trigger_filter
from event_router.plugins import PluginRegistry

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]*$"
INPUT_CORE_KEYS = ("type", "validation", "unknown_triggers")
OUTPUT_CORE_KEYS = ("type", "concurrency", "retry", "timeout")
#: "resolve": every secret reference is read (the daemon); "skip": none is, stand-ins take their place
SecretsMode = Literal["resolve", "skip"]
#: route keys the core reads; the others (`action`) are passed to outputs, which check them
#: through `Output.check_route_options`
ROUTE_KEYS = ("name", "match", "to", "stop", "reshape", "retry")

_PLUGIN_TABLE = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"type": "string", "minLength": 1}},
}
ROUTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "router": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "data_dir": {"type": "string", "minLength": 1},
                "schemas_dir": {"type": "string", "minLength": 1},
                "unmatched": {"enum": ["drop", "dead-letter"]},
                "max_pending_events": {"type": "integer", "minimum": 1},
                "shutdown_timeout": DURATION_SCHEMA,
                "log_level": {"enum": ["debug", "info", "warning", "error"]},
                "retry": RETRY_SCHEMA,
                "admin": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"listen": {"type": "string", "minLength": 1}},
                },
            },
        },
        "inputs": {
            "type": "object",
            "propertyNames": {"pattern": NAME_PATTERN},
            "additionalProperties": {
                **_PLUGIN_TABLE,
                "properties": {
                    "type": {"type": "string", "minLength": 1},
                    "validation": {"enum": ["strict", "warn", "off"]},
                    "unknown_triggers": {"enum": ["accept", "dead-letter"]},
                },
            },
        },
        "outputs": {
            "type": "object",
            "propertyNames": {"pattern": NAME_PATTERN},
            "additionalProperties": {
                **_PLUGIN_TABLE,
                "properties": {
                    "type": {"type": "string", "minLength": 1},
                    "concurrency": {"type": "integer", "minimum": 1, "maximum": 1024},
                    "retry": RETRY_SCHEMA,
                    "timeout": DURATION_SCHEMA,
                },
            },
        },
        "routes": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "to"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "match": {"type": "object"},
                    "to": {
                        "oneOf": [
                            {"type": "string", "pattern": NAME_PATTERN},
                            {
                                "type": "array",
                                "minItems": 1,
                                "items": {"type": "string", "pattern": NAME_PATTERN},
                            },
                        ]
                    },
                    "stop": {"type": "boolean"},
                    "reshape": {"type": "object"},
                    "retry": RETRY_SCHEMA,
                    "action": {"type": "object"},
                },
            },
        },
    },
}


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
) -> RouterConfig:
    """Read, validate and build `path`. Raises `ConfigErrors` listing every problem found.

    `secrets="skip"`: references are not resolved (see the module's doc). `credentials_dir`: where
    `{ credential = ... }` secrets are read instead of `$CREDENTIALS_DIRECTORY`.
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
        document, path=path, registry=registry, logger=logger, secrets=secrets, credentials_dir=credentials_dir
    )


def build_config(
    document: Mapping[str, Any],
    *,
    path: Path,
    registry: PluginRegistry,
    logger: logging.Logger | None = None,
    secrets: SecretsMode = "resolve",
    credentials_dir: Path | None = None,
) -> RouterConfig:
    """Validate a parsed router.toml document and construct its plugins."""
    loader = _Loader(path, registry, logger or logging.getLogger("event_router"), secrets, credentials_dir)
    return loader.build(document)


class _Loader:
    def __init__(
        self,
        path: Path,
        registry: PluginRegistry,
        logger: logging.Logger,
        secrets: SecretsMode = "resolve",
        credentials_dir: Path | None = None,
    ):
        self.path = path
        self.file = path.name
        self.base_dir = path.resolve().parent
        self.registry = registry
        self.logger = logger
        self.secrets = secrets
        self.credentials_dir = credentials_dir
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
        for err in _schema_errors(ROUTER_SCHEMA, document):
            self.error(*err)
        if self.errors:
            raise self.fail()
        router = document.get("router", {})
        data_dir = self.base_dir / router.get("data_dir", "var")
        schemas_dir = self.base_dir / router["schemas_dir"] if "schemas_dir" in router else None
        if schemas_dir is not None and not schemas_dir.is_dir():
            self.error("router.schemas_dir", f"{str(schemas_dir)!r} is not a directory")
        default_retry = RetryPolicy().merged(router.get("retry", {}))
        admin_listen = None
        if "admin" in router:
            try:
                admin_listen = parse_listen(router["admin"].get("listen", "127.0.0.1:9187"))
            except ValueError as exc:
                self.error("router.admin.listen", str(exc))
        inputs = {
            name: cfg
            for name, table in document.get("inputs", {}).items()
            if (cfg := self._input(name, table, data_dir)) is not None
        }
        outputs = {
            name: out
            for name, table in document.get("outputs", {}).items()
            if (out := self._output(name, table, data_dir, default_retry)) is not None
        }
        routes = self._routes(document.get("routes", []), document.get("outputs", {}))
        self._listeners_apart(document.get("inputs", {}), admin_listen)
        if not routes:
            self.warnings.append(f"{self.file}: routes: no route configured: every event is unmatched")
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
            max_pending_events=router.get("max_pending_events", 1_000_000),
            shutdown_timeout=parse_duration(router.get("shutdown_timeout", 10)),
            log_level=router.get("log_level", "info"),
            retry=default_retry,
            admin_listen=admin_listen,
            inputs=inputs,
            outputs=outputs,
            routes=tuple(routes),
            warnings=tuple(self.warnings),
            unresolved_secrets=tuple(self.skipped),
        )

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

        def shown(host: str, port: int) -> str:
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

        for i, (key, host, port) in enumerate(listeners):
            for other_key, other_host, other_port in listeners[:i]:
                if port != 0 and port == other_port and (host == other_host or {host, other_host} & wildcard):
                    self.error(
                        key,
                        f"{shown(host, port)} overlaps {other_key} ({shown(other_host, other_port)}): each "
                        "listener needs its own port",
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
        )

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
        errors = _schema_errors(cls.config_schema, own, core_keys=tuple(core_keys))
        for sub, message in errors:
            self.error(f"{key}.{sub}" if sub else key, message, plugin_label)
        if errors:
            return None
        resolved = self._resolve_secrets(key, cls.config_schema, own, plugin_label)
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
            for secret in _secrets_in(resolved)
            if not isinstance(secret, Unresolved)
            for text in (secret, *url_secrets(secret))
        ]
        try:
            return cls(resolved, context)
        except ConfigError as exc:
            self.error(f"{key}.{exc.path}" if exc.path else key, scrub(exc.message, hidden), plugin_label)
        except (ValueError, TypeError) as exc:
            self.error(key, scrub(str(exc), hidden), plugin_label)
        return None

    def _resolve_secrets(self, key: str, schema: Mapping[str, Any], value: Any, plugin: str) -> dict[str, Any] | None:
        """Replace every value the plugin's schema marks `x-secret` by the secret it refers to.

        With `secrets="skip"` a reference (its shape already validated) is replaced by an `Unresolved`
        stand-in instead: the schema's `x-placeholder`, or `PLACEHOLDER`. Plain text is used as it is.
        """
        ok = True

        def walk(sub_schema: Mapping[str, Any], node: Any, where: str) -> Any:
            nonlocal ok
            if sub_schema.get("x-secret"):
                if self.secrets == "skip" and isinstance(node, Mapping):
                    self.skipped.append(where)
                    return Unresolved(sub_schema.get("x-placeholder", PLACEHOLDER))
                try:
                    secret, plain = resolve_secret(node, base_dir=self.base_dir, credentials_dir=self.credentials_dir)
                except SecretError as exc:
                    self.error(where, str(exc), plugin)
                    self.unresolved.append(where)
                    ok = False
                    return node
                if plain and sub_schema["x-secret"] == "optional":
                    return str(node)  # may be a reference, is no secret: plain text is meant
                if plain:
                    self.warnings.append(
                        f"{self.file}: {where}: secret written in plain text; "
                        'prefer { env = "NAME" }, { file = "path" } or { credential = "name" } (systemd)'
                    )
                return secret
            if isinstance(node, dict):
                props = sub_schema.get("properties", {})
                patterns = sub_schema.get("patternProperties", {})
                extra = sub_schema.get("additionalProperties")
                out = {}
                for k, v in node.items():
                    matching = [schema for pattern, schema in patterns.items() if re.search(pattern, k)]
                    child = props.get(k, matching[0] if matching else extra if isinstance(extra, dict) else {})
                    out[k] = walk(child, v, f"{where}.{k}")
                return out
            if isinstance(node, list) and isinstance(sub_schema.get("items"), dict):
                return [walk(sub_schema["items"], v, f"{where}[{i}]") for i, v in enumerate(node)]
            return node

        result = walk(schema, dict(value), key)
        return result if ok else None

    def _routes(self, tables: Sequence[Mapping[str, Any]], outputs: Mapping[str, Any]) -> list[RouteConfig]:
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
                )
            )
        return routes

    def _compile(self, key: str, compiler: Callable[[Mapping[str, Any]], Any], spec: Mapping[str, Any]) -> Any:
        try:
            return compiler(spec)
        except PatternError as exc:
            self.error(f"{key}.{exc.path}" if exc.path else key, exc.message)
            return None


def _secrets_in(node: Any) -> list[Secret]:
    """Every resolved secret in a plugin's table."""
    if isinstance(node, Secret):
        return [node]
    if isinstance(node, Mapping):
        return [s for v in node.values() for s in _secrets_in(v)]
    if isinstance(node, list):
        return [s for v in node for s in _secrets_in(v)]
    return []


def _holds_secrets(schema: Any) -> bool:
    """Whether a schema is, or contains, a secret: a value found there is never quoted in an error.

    `signing_secrets = "whsec_..."` (a string where a list of secrets belongs) or `auth = "Bearer ..."` is
    a secret in the wrong shape, and must not be printed back.
    """
    if isinstance(schema, Mapping):
        return bool(schema.get("x-secret")) or any(_holds_secrets(v) for v in schema.values())
    if isinstance(schema, list):
        return any(_holds_secrets(v) for v in schema)
    return False


#: JSON Schema types as router.toml calls them
_TYPES = {
    "object": "a table",
    "array": "an array",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


#: size limits, described without quoting the value that broke them
_LIMITS = {
    "minItems": ("at least", "item"),
    "maxItems": ("at most", "item"),
    "minLength": ("at least", "character"),
    "maxLength": ("at most", "character"),
    "minProperties": ("at least", "key"),
    "maxProperties": ("at most", "key"),
}


def _type_of(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    return "a string" if isinstance(value, str) else type(value).__name__


def _schema_errors(schema: Mapping[str, Any], instance: Any, *, core_keys: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(dotted key path, message) for every violation, in document order, messages made for people.

    `core_keys`: keys of a plugin table the core reads, taken out of `instance` before it is checked
    against the plugin's schema; an unknown key at the top lists them among the allowed ones.
    """
    validator = Draft202012Validator(dict(schema))
    found = sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])
    return [(_key_path(e.absolute_path), _message(e, () if e.absolute_path else core_keys)) for e in found]


def _key_path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(error: ValidationError, core_keys: Sequence[str] = ()) -> str:
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        allowed = sorted({*schema.get("properties", {}), *core_keys})
        unknown = sorted(k for k in error.instance if k not in allowed)
        guesses = [(key, guess) for key in unknown if (guess := closest(str(key), allowed)) is not None]
        if len(unknown) == 1 and guesses:
            guess = f"; did you mean {guesses[0][1]!r}?"
        else:
            guess = f"; did you mean {', '.join(f'{g!r} for {k!r}' for k, g in guesses)}?" if guesses else ""
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}{guess}{hint}"
    if error.validator == "required":
        return str(error.message).replace("is a required property", "is required but missing")
    if error.validator == "propertyNames" or "propertyNames" in error.schema_path:
        return f"{error.instance!r} is not a valid name (letters, digits, '_' and '-', starting with a letter)"
    if schema.get("x-secret"):
        return 'must be a string or a table with one key: env, file or credential (e.g. { env = "NAME" })'
    if error.validator == "type":
        # described, not quoted: a wrong-typed value may be a secret written under the wrong key
        expected = schema.get("type")
        names = [_TYPES.get(str(t), str(t)) for t in (expected if isinstance(expected, list) else [expected])]
        return f"must be {' or '.join(names)}, not {_type_of(error.instance)}"
    if error.validator in _LIMITS:
        bound, unit = _LIMITS[str(error.validator)]
        limit = error.validator_value
        return f"must have {bound} {limit} {unit}{'' if limit == 1 else 's'}"
    if _holds_secrets(schema):
        return f"is not valid here (fails {error.validator!r} of the schema)"
    if schema is DURATION_SCHEMA or schema == DURATION_SCHEMA:
        return f"{error.instance!r} is not a duration (seconds, or a string like '500ms', '30s', '5m', '2h')"
    if error.validator in ("oneOf", "anyOf") and error.context:
        return _message(min(error.context, key=lambda e: len(e.message)))
    if error.validator == "enum":
        return f"{error.instance!r} is not one of {', '.join(map(repr, schema.get('enum', [])))}"
    if error.validator == "pattern" and isinstance(error.instance, str):
        return f"{redact_url(error.instance)!r} does not match {error.validator_value!r}"
    return str(error.message)
