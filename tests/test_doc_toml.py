"""Every ```toml block in README.md and docs/ is TOML that parses: one pasted into router.toml must not be
refused as `not valid TOML`. (Other tests read the blocks with routes or actions in them, and skipped one
that did not parse as a fragment; an `auth` inline table split over two lines went unnoticed so.)"""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from event_router.testing import ROOT
from event_router.web.auth import AUTH_SCHEMA


def _blocks() -> list[tuple[str, str]]:
    found = []
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted(ROOT.glob("plugins/*/README.md"))]
    for doc in docs:
        text = doc.read_text()
        for block in re.finditer(r"^```toml\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE):
            line = text[: block.start()].count("\n") + 1
            found.append((f"{doc.relative_to(ROOT)}:{line}", block.group(1)))
    return found


BLOCKS = _blocks()


def test_the_docs_have_toml_blocks() -> None:
    # the pattern finds them: a change of fence style must not leave this test checking nothing
    assert len(BLOCKS) >= 40
    assert any(where.startswith("docs/connector.md:") and "[outputs.tickets.auth]" in b for where, b in BLOCKS)


@pytest.mark.parametrize(("where", "block"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_every_toml_block_in_the_docs_parses(where: str, block: str) -> None:
    try:
        tomllib.loads(block)
    except tomllib.TOMLDecodeError as exc:
        pytest.fail(f"{where}: not valid TOML: {exc}")


def test_every_auth_table_in_the_docs_is_one_the_outputs_take() -> None:
    validator = Draft202012Validator(AUTH_SCHEMA)
    seen = 0
    for where, block in BLOCKS:
        outputs: dict[str, Any] = tomllib.loads(block).get("outputs", {})
        for name, output in outputs.items():
            if isinstance(output, dict) and "auth" in output:
                errors = [e.message for e in validator.iter_errors(output["auth"])]
                assert errors == [], f"{where}: outputs.{name}.auth: {errors}"
                seen += 1
    assert seen >= 4  # connector.md's api_key, bearer, basic and oauth2
