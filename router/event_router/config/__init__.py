"""router.toml -> the core's plain data (`event_router.core.model`): schema, secret resolution, plugin
construction, error wording. The core never imports this package; the app and the commands do."""

from event_router.config.loader import ConfigErrors, SecretsMode, build_config, load_config

__all__ = ["ConfigErrors", "SecretsMode", "build_config", "load_config"]
