"""enmeshed-event-router: a durable event router for the enmeshed Connector."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("enmeshed-event-router")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
