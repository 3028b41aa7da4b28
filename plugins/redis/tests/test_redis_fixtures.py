"""The private_redis fixture without the redis-server binary: it fails in CI, where the machine must have it,
and skips on a developer's machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from event_router.testing import pytest_in_subprocess

NEEDS_REDIS = """
def test_private_redis(private_redis):
    private_redis()
"""


@pytest.mark.parametrize(("ci", "outcome", "code"), [("true", "1 error", 1), ("", "1 skipped", 0)])
def test_private_redis_without_redis_server(tmp_path: Path, ci: str, outcome: str, code: int) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    done = pytest_in_subprocess(
        tmp_path, NEEDS_REDIS, conftest_dir=Path(__file__).parent, env={"CI": ci, "PATH": str(empty)}
    )
    output = done.stdout + done.stderr
    assert done.returncode == code, output
    assert outcome in output, output
    if ci:
        assert "redis-server is not installed" in output, output
