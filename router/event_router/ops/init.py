"""`event-router init`: a starter router.toml, written with tomli-w so it is always valid TOML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w

HEADER = """\
# router.toml written by `event-router init`. Reference: docs/configuration.md
# Check it with `event-router check`, try an event with `event-router test EVENT.json`.
# [router.admin] serves /healthz, /readyz, /metrics, POST /reload (`event-router reload`) and the web console
# (http://127.0.0.1:9187/console/) on loopback; off the loopback it needs token = { env = "ROUTER_ADMIN_TOKEN" }.

"""

STARTER: dict[str, Any] = {
    "router": {
        "data_dir": "./var",
        "unmatched": "drop",
        # /healthz, /readyz, /metrics and POST /reload (`event-router reload`); loopback only
        "admin": {"listen": "127.0.0.1:9187"},
    },
    "inputs": {
        "connector": {
            "type": "webhook",
            "listen": "127.0.0.1:8787",
            "path": "/events",
            "api_key": {"env": "ROUTER_WEBHOOK_API_KEY"},
            "validation": "strict",
        }
    },
    "outputs": {"archive": {"type": "file", "path": "./var/events-%Y-%m-%d.jsonl"}},
    "routes": [{"name": "archive everything", "match": {"trigger": ["**"]}, "to": ["archive"]}],
}


def write_starter(path: Path) -> None:
    path.write_text(HEADER + tomli_w.dumps(STARTER), encoding="utf-8")
