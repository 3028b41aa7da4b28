"""The core's tests take the test kit's fixtures (event_router.testing); none of their own is shared."""

from __future__ import annotations

#: the test kit's fixtures (`make_app`, `anyio_backend`, and the autouse `reap_routers`): opted into here, in
#: a conftest.py pytest reads before the session (a testpath of its own), as any plugin's suite does
pytest_plugins = ["event_router.testing.fixtures"]
