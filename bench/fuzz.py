"""Coverage-guided fuzzing (atheris) of the router's input paths: the webhook decoder, validation and
routing (plan_event), and the router.toml loader.

    .venv/bin/pip install atheris
    .venv/bin/python bench/fuzz.py -atheris_runs=200000          # or -max_total_time=600

A crash prints the input that caused it; add it to tests/test_fuzz.py as a regression case.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tomllib
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from event_router.app import load_schemas
    from event_router.builtin.webhook import WebhookInput
    from event_router.config import ConfigErrors, build_config
    from event_router.pipeline import plan_event
    from event_router.plugin import PluginContext
    from event_router.plugins import load_plugins

REGISTRY = load_plugins(entry_points=False)
ROUTER_TOML = Path(__file__).resolve().parents[1] / "router.toml"
CONFIG = build_config(
    tomllib.loads(ROUTER_TOML.read_text().replace('api_key = { env = "ROUTER_WEBHOOK_API_KEY" }', "")),
    path=ROUTER_TOML,
    registry=REGISTRY,
)
SCHEMAS = load_schemas(CONFIG, REGISTRY)
WEBHOOK = WebhookInput(
    {"listen": "127.0.0.1:1"}, PluginContext("fuzz", Path("/tmp"), logging.getLogger("fuzz"), Path("/tmp"))
)


def one_input(data: bytes) -> None:
    if data[:1] == b"T":  # the config loader
        try:
            document = tomllib.loads(data[1:].decode("utf-8", "replace"))
        except tomllib.TOMLDecodeError:
            return
        with contextlib.suppress(ConfigErrors):
            build_config(document, path=ROUTER_TOML, registry=REGISTRY)
        return
    try:
        event = WEBHOOK._decode(data, None, {})
    except ValueError:
        return
    for validation in ("strict", "off"):
        plan_event(event, config=CONFIG, schemas=SCHEMAS, validation=validation)


def seed(corpus: Path) -> None:
    """Start from real Connector bodies: orjson is C the fuzzer cannot see into, so from random bytes it
    would almost never reach validation and routing."""
    import orjson

    from event_router.testing import example_events

    corpus.mkdir(parents=True, exist_ok=True)
    if any(corpus.iterdir()):
        return
    for index, event in enumerate(example_events()):
        (corpus / f"example-{index}").write_bytes(orjson.dumps(event))
    (corpus / "config").write_bytes(b"T" + ROUTER_TOML.read_bytes())


if __name__ == "__main__":
    dirs = [Path(a) for a in sys.argv[1:] if not a.startswith("-")]
    if dirs:
        seed(dirs[0])
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
