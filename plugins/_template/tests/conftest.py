"""In the router's checkout plugins/_template is a folder to copy, not an installed distribution: its
package is imported from here, and the tests pass it to `make_app(..., plugins=PLUGINS)`, which registers
it as its entry point would. In your copy, once `pip install -e .` ran, both find the installed plugin."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("event_router_template") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: the router's test kit (`make_app`, `anyio_backend`, the autouse `reap_routers`): opt-in, named here in the
#: suite's top-level conftest.py, the one place pytest takes `pytest_plugins` from
pytest_plugins = ["event_router.testing.fixtures"]
