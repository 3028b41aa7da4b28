"""In the router's checkout plugins/_template is a folder to copy, not an installed distribution: its
package is imported from here, and the tests pass it to `make_app(..., plugins=PLUGINS)`, which registers
it as its entry point would. In your copy, once `pip install -e .` ran, both find the installed plugin."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("event_router_template") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
