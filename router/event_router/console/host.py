"""What the console asks of the running router (`event_router.app.App`); the admin endpoint's `Administered`
asks this and more."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from event_router.core.deadletters import ReplayReport
from event_router.core.model import RouterConfig
from event_router.core.stats import Stats
from event_router.core.tap import Tap
from event_router.core.validation import SchemaRegistry


class ConsoleHost(Protocol):
    @property
    def config(self) -> RouterConfig: ...

    @property
    def tap(self) -> Tap: ...

    @property
    def stats(self) -> Stats: ...

    @property
    def schemas(self) -> SchemaRegistry: ...

    def readiness(self) -> dict[str, Any]: ...

    def outputs_report(self) -> dict[str, dict[str, Any]]: ...

    async def pause_output(self, name: str, paused: bool, by: str) -> dict[str, Any]: ...

    async def retry_output(self, name: str, by: str) -> int: ...

    async def replay_dead_letters(self, ids: Sequence[int], by: str) -> ReplayReport: ...

    async def purge_dead_letters(self, ids: Sequence[int], by: str) -> int: ...
