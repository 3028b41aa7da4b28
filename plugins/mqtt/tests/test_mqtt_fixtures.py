"""The private-broker fixture without the mosquitto binary: it fails in CI, where the machine must have it,
and skips on a developer's machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from event_router.testing import assert_program_fixture_outcome

NEEDS_MOSQUITTO = """
def test_private_broker(private_broker):
    private_broker()
"""


@pytest.mark.parametrize("ci", [True, False], ids=["ci", "developer"])
def test_private_broker_without_mosquitto(tmp_path: Path, ci: bool) -> None:
    assert_program_fixture_outcome(
        tmp_path, NEEDS_MOSQUITTO, conftest_dir=Path(__file__).parent, program="mosquitto", ci=ci
    )
