"""The private_redis fixture without the redis-server binary: it fails in CI, where the machine must have it,
and skips on a developer's machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from event_router.testing import assert_program_fixture_outcome

NEEDS_REDIS = """
def test_private_redis(private_redis):
    private_redis()
"""


@pytest.mark.parametrize("ci", [True, False], ids=["ci", "developer"])
def test_private_redis_without_redis_server(tmp_path: Path, ci: bool) -> None:
    assert_program_fixture_outcome(
        tmp_path, NEEDS_REDIS, conftest_dir=Path(__file__).parent, program="redis-server", ci=ci
    )
