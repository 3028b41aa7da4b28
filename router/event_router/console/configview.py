"""The configuration in force, as the console's configuration page shows it: no secret value, ever.

The core keeps each input's and output's table as written (references such as `{ env = "NAME" }`, which
name a secret and hold none, or plain text); the resolved secrets stay inside the plugins. Here every value
the plugin's schema marks `x-secret` is masked when it is written in plain text (a reference is shown: it
says where the secret comes from); where no schema says what a value is (a route's options), so is every
value under a key named like a credential (`is_credential_header`: auth, key, token, secret, password...);
and every URL's password is.
`[router.admin] token` and `[router] spool.dsn` are shown as `***` when set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import tomli_w

from event_router.api.secrets import MASK, is_credential_header, redact_url
from event_router.core.model import RouterConfig
from event_router.core.spool.backend import describe as describe_spool

_URL_WITH_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]*@", re.IGNORECASE)


def _is_reference(node: Any) -> bool:
    return (
        isinstance(node, Mapping)
        and len(node) == 1
        and next(iter(node)) in ("env", "file", "credential")
        and all(isinstance(v, str) for v in node.values())
    )


def masked_table(schema: Mapping[str, Any], table: Any) -> Any:
    """`table` (a plugin's, as written) with its secrets masked, walking `schema` as the loader does."""

    def walk(sub_schema: Mapping[str, Any], node: Any, key: str | None) -> Any:
        secret = sub_schema.get("x-secret") if isinstance(sub_schema, Mapping) else None
        if _is_reference(node):
            return dict(node)
        if isinstance(node, str):
            # where the schema says nothing of a value (a route's options), a key named like a credential is one
            named = not sub_schema and key is not None and is_credential_header(key)
            if secret in (True, "url") or named:
                # a URL that is a secret only through its password: shown without it
                return redact_url(node) if secret == "url" and _URL_WITH_PASSWORD.match(node) is None else MASK
            return redact_url(node) if _URL_WITH_PASSWORD.match(node) else node
        if isinstance(node, Mapping):
            props = sub_schema.get("properties", {}) if isinstance(sub_schema, Mapping) else {}
            patterns = sub_schema.get("patternProperties", {}) if isinstance(sub_schema, Mapping) else {}
            extra = sub_schema.get("additionalProperties") if isinstance(sub_schema, Mapping) else None
            out = {}
            for k, v in node.items():
                matching = [s for pattern, s in patterns.items() if re.search(pattern, k)]
                child = props.get(k, matching[0] if matching else extra if isinstance(extra, Mapping) else {})
                out[k] = walk(child, v, k)
            return out
        if isinstance(node, list):
            items = sub_schema.get("items", {}) if isinstance(sub_schema, Mapping) else {}
            return [walk(items if isinstance(items, Mapping) else {}, v, key) for v in node]
        if secret in (True, "url") and node is not None:
            return MASK
        return node

    return walk(schema, table, None)


def config_document(config: RouterConfig) -> dict[str, Any]:
    """The configuration in force as a router.toml document, secrets masked."""
    router: dict[str, Any] = {
        "data_dir": str(config.data_dir),
        "unmatched": config.unmatched,
        "max_pending_events": config.max_pending_events,
        "shutdown_timeout": _duration(config.shutdown_timeout),
        "announced_retention": _duration(config.announced_retention),
        "retention": _duration(config.retention),
        "log_level": config.log_level,
    }
    if config.schemas_dir is not None:
        router["schemas_dir"] = str(config.schemas_dir)
    spool: dict[str, Any] = {"backend": config.spool.backend, "where": describe_spool(config.data_dir, config.spool)}
    if config.spool.backend == "postgresql":
        spool = {"backend": "postgresql", "dsn": MASK, "lease": _duration(config.spool.lease)}
    router["spool"] = spool
    if config.admin_listen is not None:
        host, port = config.admin_listen
        admin: dict[str, Any] = {"listen": f"[{host}]:{port}" if ":" in host else f"{host}:{port}"}
        admin["unmask"] = config.admin_unmask
        if config.admin_token is not None:
            admin["token"] = MASK
        router["admin"] = admin
    document: dict[str, Any] = {"router": router}
    document["inputs"] = {
        name: masked_table(inp.plugin.config_schema, dict(inp.table)) for name, inp in config.inputs.items()
    }
    document["outputs"] = {
        name: masked_table(out.plugin.config_schema, dict(out.table)) for name, out in config.outputs.items()
    }
    routes = []
    for route in config.routes:
        table: dict[str, Any] = {"name": route.name, "to": list(route.to)}
        if route.match:
            table["match"] = masked_table({}, dict(route.match))
        if route.stop:
            table["stop"] = True
        if route.retry:
            table["retry"] = dict(route.retry)
        if route.options:
            table.update(masked_table({}, dict(route.options)))
        routes.append(table)
    document["routes"] = routes
    return document


def _duration(seconds: float) -> str:
    """Seconds as router.toml writes a duration: in the largest unit that divides them (`7d`, `90s`)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def config_text(config: RouterConfig) -> str:
    """`config_document` as TOML."""
    return tomli_w.dumps(_plain(config_document(config)))


def _plain(value: Any) -> Any:
    """Only what TOML writes: mappings, lists, str, int, float, bool (a Secret is a str subclass)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value
