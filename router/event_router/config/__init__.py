"""router.toml -> the core's plain data (`event_router.core.model`). `loader` reads and builds; `schema` is the
schema of router.toml's own tables, `secrets` resolves secret references, `wording` turns schema errors into
messages. The core never imports this package; the app and the commands do."""

from event_router.config.loader import ConfigErrors, build_config, load_config
from event_router.config.secrets import SecretsMode

__all__ = ["ConfigErrors", "SecretsMode", "build_config", "load_config"]
