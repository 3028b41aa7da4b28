"""`event-router test --expect FILE...`: route tests run as CI runs them, the real command on real files.

Exit 0 when every case passes, 1 with a diff per mismatch, 2 for a test file (or config) that cannot be used.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from event_router.testing import ROOT, run_cli


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    """The repository's router.toml and the example event, copied so nothing lands in the checkout."""
    target = tmp_path / "router.toml"
    shutil.copy(ROOT / "router.toml", target)
    shutil.copy(ROOT / "examples" / "message-received.json", tmp_path / "message-received.json")
    return target


def test_the_shipped_example_tests_pass(shipped: Path) -> None:
    """examples/router.test.toml, as README and docs/routing.md tell to run it: CI runs it here."""
    result = run_cli("test", "-c", str(shipped), "--expect", str(ROOT / "examples" / "router.test.toml"))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "test: 5 passed, 0 failed"
    assert all(line.startswith("ok   ") for line in lines[:-1]), lines
    assert 'tests[0] ("a Mail message goes to the CRM and the archive")' in lines[0]


FAILING = """
[[tests]]
name = "mail goes to the archive only"
event = "message-received.json"
routes = ["archive everything"]
outputs = ["archive"]

[[tests.deliveries]]
output = "crm"
fields = { "data.content.subject" = "Old address", "data.isOwn" = { exists = false }, "meta.note" = "x" }

[[tests.deliveries]]
output = "archive"
[tests.deliveries.payload]
id = "00000000-0000-7000-8000-000000000000"
trigger = "transport.messageReceived"
source = "connector"
received_at = "1970-01-01T00:00:00.000Z"
meta = {}

[[tests]]
name = "a valid event is expected to be a dead letter"
event = { trigger = "runtime.modulesStarted" }
dead_letter = "validation"

[[tests]]
name = "the other cases do not stop this one"
event = { trigger = "runtime.modulesStarted" }
routes = ["archive everything"]
outputs = ["archive"]
"""


def test_a_failing_case_exits_1_with_a_diff_per_mismatch(shipped: Path) -> None:
    tests = shipped.parent / "failing.test.toml"
    tests.write_text(FAILING)
    result = run_cli("test", "-c", str(shipped), "--expect", str(tests))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert lines[0] == f'FAIL {tests}: tests[0] ("mail goes to the archive only")'
    expected = [
        'routes: expected ["archive everything"], got ["messages to CRM"]',
        'outputs: expected ["archive"], got ["archive","crm"] (unexpected ["crm"])',
        'deliveries[0] (crm): fields.data.content.subject: expected "Old address", got "New postal address"',
        "deliveries[0] (crm): fields.data.isOwn: expected nothing there, got false",
        'deliveries[0] (crm): fields.meta.note: expected "x", got nothing there',
    ]
    for line in expected:
        assert line in lines, line
    # the whole payload: only what differs, by path
    data = [line for line in lines if line.startswith("deliveries[1] (archive): payload.data:")]
    assert len(data) == 1 and data[0].startswith(
        'deliveries[1] (archive): payload.data: expected nothing there, got {"id":'
    )
    assert not any("payload.trigger" in line or "payload.id" in line for line in lines)
    assert f'FAIL {tests}: tests[1] ("a valid event is expected to be a dead letter")' in lines
    assert "dead_letter: expected validation, got none" in lines
    assert f'ok   {tests}: tests[2] ("the other cases do not stop this one")' in lines
    assert lines[-1] == "test: 1 passed, 2 failed"


def test_dead_letters_are_expected_by_reason_and_error(shipped: Path) -> None:
    tests = shipped.parent / "dead.test.toml"
    tests.write_text(
        '[[tests]]\nname = "invalid"\n'
        'event = { trigger = "transport.relationshipChanged", data = { status = "Sleeping" } }\n'
        'dead_letter = { reason = "validation", error = "data.status" }\n'
        '[[tests]]\nname = "wrong piece of the error"\n'
        'event = { trigger = "transport.relationshipChanged", data = { status = "Sleeping" } }\n'
        'dead_letter = { reason = "validation", error = "no such words" }\n'
        '[[tests]]\nname = "wrong reason"\n'
        'event = { trigger = "transport.relationshipChanged", data = { status = "Sleeping" } }\n'
        'dead_letter = "no_route"\n'
    )
    result = run_cli("test", "-c", str(shipped), "--expect", str(tests))
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert f'ok   {tests}: tests[0] ("invalid")' in out
    assert 'dead_letter.error: expected it to contain "no such words", got "data' in out
    assert "dead_letter: expected no_route, got validation: data" in out
    assert out.splitlines()[-1] == "test: 1 passed, 2 failed"


def test_unmatched_events_are_dead_letters_under_dead_letter_settings(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text(
        '[router]\nunmatched = "dead-letter"\n[inputs.connector]\ntype = "webhook"\nlisten = "127.0.0.1:8787"\n'
        'unknown_triggers = "dead-letter"\n[outputs.archive]\ntype = "file"\npath = "./var/a.jsonl"\n'
        '[[routes]]\nname = "mail"\nmatch = { trigger = "transport.messageReceived" }\nto = "archive"\n'
    )
    tests = tmp_path / "t.json"
    tests.write_text(
        json.dumps(
            {
                "tests": [
                    {
                        "name": "nothing routes it",
                        "event": {"trigger": "runtime.modulesStarted"},
                        "dead_letter": "no_route",
                    },
                    {
                        "name": "unknown",
                        "event": {"namespace": "transport.somethingNew", "data": None},
                        "dead_letter": {"reason": "unknown_trigger", "error": "transport.somethingNew"},
                        "routes": [],
                        "outputs": [],
                    },
                ]
            }
        )
    )
    result = run_cli("test", "-c", str(config), "--expect", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "test: 2 passed, 0 failed"


#: (test file text, what the error says): each makes the run exit 2 before any case runs
BROKEN = [
    ("x = ", "broken.test.toml: not valid TOML"),
    ('[[tests]]\nname = "a"\nevent = { trigger = "runtime.modulesStarted" }\n', 'tests[0] ("a"): expects nothing'),
    (
        '[[tests]]\nname = "typo"\nevent = { trigger = "runtime.modulesStarted" }\nroutes = ["archive everythin"]\n',
        "tests[0] (\"typo\"): routes[0]: no route named 'archive everythin' in router.toml; "
        "did you mean 'archive everything'?",
    ),
    (
        '[[tests]]\nname = "no such output"\nevent = { trigger = "runtime.modulesStarted" }\n'
        '[[tests.deliveries]]\noutput = "crn"\n',
        "tests[0] (\"no such output\"): deliveries[0].output: no output named 'crn' in router.toml "
        "(there are: archive, crm)",
    ),
    (
        '[[tests]]\nname = "no event"\nroutes = []\n',
        'tests[0] ("no event"): event: every case needs an event',
    ),
    (
        '[[tests]]\nname = "missing file"\nevent = "nope.json"\nroutes = []\n',
        'tests[0] ("missing file"): event.file: cannot read',
    ),
    (
        '[[tests]]\nname = "reason"\nevent = { trigger = "runtime.modulesStarted" }\ndead_letter = "invalid"\n',
        "dead_letter: reason 'invalid' is not one of 'validation', 'unknown_trigger', 'no_route'",
    ),
    (
        '[[tests]]\nname = "a date"\nevent = { trigger = "runtime.modulesStarted" }\n'
        '[[tests.deliveries]]\noutput = "archive"\nfields = { received_at = 1970-01-01T00:00:00Z }\n',
        'tests[0] ("a date"): deliveries[0].fields.received_at: a TOML date or time: quote it',
    ),
    (
        '[[tests]]\nname = "a"\nevent = { trigger = "runtime.modulesStarted" }\nroutes = []\n'
        '[[tests]]\nname = "a"\nevent = { trigger = "runtime.modulesStarted" }\nroutes = []\n',
        'tests[1] ("a"): name: tests[0] has the same name',
    ),
    (
        '[[tests]]\nname = "a"\nevent = { trigger = "runtime.modulesStarted" }\nroute = ["x"]\n',
        "tests[0] (\"a\"): route: unknown key; did you mean 'routes'?",
    ),
    ('[tests]\nname = "a"\n', "tests: must be a non-empty list of cases"),
]


@pytest.mark.parametrize(("text", "says"), BROKEN)
def test_a_broken_test_file_exits_2_and_says_where(shipped: Path, text: str, says: str) -> None:
    broken = shipped.parent / "broken.test.toml"
    broken.write_text(text)
    good = ROOT / "examples" / "router.test.toml"
    result = run_cli("test", "-c", str(shipped), "--expect", str(good), str(broken))
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {broken}: ") and says in errors[0], errors
    assert result.stdout == "", "no case runs while a test file is broken"
    assert "Traceback" not in result.stderr


def test_a_config_that_cannot_be_used_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text('[inputs.a]\ntype = "webhook"\nlisten = "nowhere"\n')
    result = run_cli("test", "-c", str(config), "--expect", str(ROOT / "examples" / "router.test.toml"))
    assert result.returncode == 2
    assert "error: router.toml: inputs.a.listen: 'nowhere' is not host:port" in result.stderr


def test_an_events_file_and_expect_are_one_or_the_other(shipped: Path) -> None:
    both = run_cli("test", "-c", str(shipped), str(ROOT / "examples" / "message-received.json"), "--expect", "x")
    assert both.returncode == 2 and "not both" in both.stderr
    neither = run_cli("test", "-c", str(shipped))
    assert neither.returncode == 2 and "give an events file (or --expect test files)" in neither.stderr


def test_help_documents_the_exit_status() -> None:
    result = run_cli("test", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert (
        "With --expect, exit status: 0 when every case passes; 1 when one does not (each mismatch is printed); 2 "
        "when a test file or the config cannot be used."
    ) in text


def test_the_docs_example_passes_against_the_shipped_router_toml(shipped: Path) -> None:
    """docs/routing.md's test file, as written there, tests the shipped router.toml."""
    blocks = [
        block
        for block in re.findall(r"```toml\n(.*?)```", (ROOT / "docs" / "routing.md").read_text(), flags=re.DOTALL)
        if "[[tests]]" in block
    ]
    assert len(blocks) == 1
    tests = shipped.parent / "docs.test.toml"
    tests.write_text(blocks[0])
    result = run_cli("test", "-c", str(shipped), "--expect", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "test: 2 passed, 0 failed"
