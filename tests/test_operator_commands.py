"""What an operator sees in the first hour: `test` as a CI gate, `status`, `dlq list|purge`, `init`, the
README's quick start. Real subprocesses, a real router, real HTTP."""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from event_router.testing import (
    ROOT,
    RouterProcess,
    example,
    free_port,
    http_receiver,
    post,
    read_jsonl,
    run_cli,
    wait_for,
)

ENV = {"ROUTER_WEBHOOK_API_KEY": "ops-key"}
HEADERS = {"x-api-key": "ops-key"}


def write_config(tmp: Path, port: int, crm_url: str, *, admin: int | None = None, spool: str = "") -> Path:
    path = tmp / "router.toml"
    admin_table = f'[router.admin]\nlisten = "127.0.0.1:{admin}"\n' if admin else ""
    path.write_text(f"""
[router]
data_dir = "./var"
shutdown_timeout = "2s"
{spool}
{admin_table}
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:{port}"
api_key = {{ env = "ROUTER_WEBHOOK_API_KEY" }}
validation = "strict"
[outputs.crm]
type = "http"
url = "{crm_url}"
timeout = "2s"
retry = {{ initial_backoff = "200ms", max_backoff = "1s", max_attempts = 1000 }}
[outputs.archive]
type = "file"
path = "./var/events.jsonl"
[[routes]]
name = "mail to crm"
match = {{ trigger = ["transport.messageReceived"] }}
to = ["crm"]
[[routes]]
name = "archive everything"
match = {{ trigger = ["**"] }}
to = ["archive"]
""")
    return path


def invalid() -> dict[str, Any]:
    """An event its schema refuses (strict validation: a dead letter)."""
    event = example("transport.relationshipChanged")
    event["data"]["status"] = "Sleeping"
    return event


def cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "-c", str(config), env=ENV)


def dead_letter_ids(config: Path) -> list[int]:
    listing = cli("dlq", "list", "--json", config=config)
    assert listing.returncode == 0, listing.stderr
    return [row["id"] for row in json.loads(listing.stdout)]


@pytest.fixture
def dead_letters(tmp_path: Path) -> Iterator[Path]:
    """A config whose spool holds three validation dead letters (two triggers), the router stopped again."""
    port = free_port()
    config = write_config(tmp_path, port, f"http://127.0.0.1:{free_port()}/hooks")
    with RouterProcess(config, env=ENV):
        for event in (invalid(), invalid(), {"trigger": "transport.messageReceived", "data": {}}):
            status, body, _ = post(f"http://127.0.0.1:{port}/events", event, HEADERS)
            assert status == 422, body
    assert len(dead_letter_ids(config)) == 3
    yield config


# --- event-router test ------------------------------------------------------------------------------------


def test_test_exits_1_and_names_each_event_that_would_be_dead_lettered(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_port(), "http://127.0.0.1:9/hooks")
    events = tmp_path / "events.json"
    events.write_text(json.dumps([example("transport.messageReceived"), invalid()]))
    result = cli("test", str(events), config=config)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)  # the report is on stdout all the same
    assert report[1]["dead_letter"]["reason"] == "validation"
    lines = result.stderr.splitlines()
    assert lines[0].startswith(
        f"error: {events}[1] (transport.relationshipChanged) would be dead-lettered: validation: data.status"
    ), result.stderr
    assert lines[-1] == "test: 1 of 2 event(s) would be dead-lettered"

    events.write_text(json.dumps(example("transport.messageReceived")))
    passed = cli("test", str(events), config=config)
    assert passed.returncode == 0, passed.stderr
    assert passed.stderr.strip() == "test: 1 event(s), none would be dead-lettered"
    assert json.loads(passed.stdout)["dead_letter"] is None


def test_test_exits_1_when_an_output_cannot_build_its_request(tmp_path: Path) -> None:
    """Valid and routed, but the URL needs a field this event lacks: the delivery would be a dead letter."""
    config = write_config(tmp_path, free_port(), "http://127.0.0.1:9/hooks/{{data.nothing}}")
    events = tmp_path / "mail.json"
    events.write_text(json.dumps(example("transport.messageReceived")))
    result = cli("test", str(events), config=config)
    assert result.returncode == 1
    assert "cannot build URL" in json.loads(result.stdout)["deliveries"][0]["error"]
    assert (
        f"error: {events} (transport.messageReceived) would be dead-lettered: output crm (route 'mail to crm'): "
        "cannot build URL"
    ) in result.stderr


def test_test_help_documents_the_exit_status() -> None:
    result = run_cli("test", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "exit status: 0 when no event would be dead-lettered; 1 when one would" in text


# --- event-router status ----------------------------------------------------------------------------------

SNAKE = re.compile(r"[a-z][a-z0-9_]*")


def machine_keys(value: object, path: str = "") -> list[str]:
    """Every key of a JSON value that is not snake_case, except output names (router.toml's own)."""
    bad: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if path not in (".outputs", ".router.inputs") and not SNAKE.fullmatch(key):
                bad.append(f"{path}.{key}")
            bad += machine_keys(item, f"{path}.{key}")
    elif isinstance(value, list):
        for item in value:
            bad += machine_keys(item, f"{path}[]")
    return bad


def test_status_shows_each_outputs_backlog_next_retry_and_last_error(tmp_path: Path) -> None:
    port, closed = free_port(), free_port()
    config = write_config(tmp_path, port, f"http://127.0.0.1:{closed}/hooks")
    with RouterProcess(config, env=ENV) as router:
        assert post(f"http://127.0.0.1:{port}/events", example("transport.messageReceived"), HEADERS)[0] == 202
        assert post(f"http://127.0.0.1:{port}/events", invalid(), HEADERS)[0] == 422
        router.wait_log("delivery failed, will retry")
        result = cli("status", "--json", config=config)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert machine_keys(status) == [], status
    crm = status["outputs"]["crm"]
    assert (crm["configured"], crm["pending"], crm["retrying"], crm["dead_letters"]) == (True, 1, 1, 0)
    assert crm["oldest_pending_age_seconds"] >= 0
    assert f"127.0.0.1:{closed}" in crm["last_error"], crm
    assert crm["next_retry_attempt"] >= 2 and crm["next_retry_in_seconds"] >= 0
    assert datetime.fromisoformat(crm["next_retry_at"].replace("Z", "+00:00")).year >= 2026
    assert status["outputs"]["archive"] == {
        "configured": True,
        "pending": 0,
        "oldest_pending_age_seconds": None,
        "max_pending": 100_000,
        "retrying": 0,
        "next_retry_at": None,
        "next_retry_in_seconds": None,
        "next_retry_attempt": None,
        "last_error": None,
        "dead_letters": 0,
        "paused": False,
        "paused_at": None,
        "paused_by": None,
        "breaker": "off",
        "breaker_opened_at": None,
        "breaker_router": None,
        "breaker_error": None,
    }
    assert status["dead_letters"] == {"total": 1, "counts": [{"output": None, "reason": "validation", "count": 1}]}
    assert status["pending_events"] == 1
    # no [router.admin]: the spool does not know the inputs, and status says so instead of listing none
    assert status["router"]["inputs"] is None
    assert "[router.admin] is not configured" in status["router"]["error"]

    text = cli("status", config=config)  # the router is stopped: the spool says the same
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    header = next(line for line in lines if line.startswith("OUTPUT "))
    assert header.split("  ")[0] == "OUTPUT"
    for column in ("STATE", "PENDING", "OLDEST", "MAX PENDING", "RETRYING", "DEAD LETTERS", "NEXT RETRY", "LAST ERROR"):
        assert column in header
    assert crm_state(lines, header) == "active"
    crm_line = next(line for line in lines if line.startswith("crm "))
    # columns line up under their headers: the next retry's time and the error start where theirs do
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", crm_line[header.index("NEXT RETRY") :][:20])
    # how long crm's oldest pending delivery has waited (seconds, then minutes and seconds)
    assert re.fullmatch(r"\d+s|\d+m\d\ds", crm_line[header.index("PENDING") + 8 : header.index("MAX PENDING")].strip())
    assert crm_line[header.index("LAST ERROR") :].startswith("POST http://127.0.0.1:")
    assert f"127.0.0.1:{closed}" in crm_line
    assert "dead letters: 1" in lines
    assert any(line.split() == ["-", "validation", "1"] for line in lines), text.stdout
    assert any(line.startswith("inputs: unknown: [router.admin] is not configured") for line in lines), text.stdout


def crm_state(lines: list[str], header: str) -> str:
    row = next(line for line in lines if line.startswith("crm "))
    return row[header.index("STATE") : header.index("PENDING")].strip()


# --- event-router dlq list / purge ---------------------------------------------------------------------------


def test_dlq_list_has_a_header_and_aligned_columns(dead_letters: Path) -> None:
    result = cli("dlq", "list", config=dead_letters)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["ID", "DEAD-LETTERED", "REASON", "OUTPUT", "ROUTE", "TRIGGER", "ATTEMPTS", "ERROR"]
    assert len(rows) == 3
    for row in rows:
        assert row[: header.index("ID") + 2].strip().isdigit()  # ids right-aligned under ID
        assert row[header.index("REASON") :].startswith("validation ")
        assert row[header.index("TRIGGER") :].split()[0] in (
            "transport.relationshipChanged",
            "transport.messageReceived",
        )
        assert row[header.index("ERROR") :].startswith("data")
        # every column is separated from the next by at least two spaces, so none runs into another
        assert len(re.split(r"\s{2,}", row.strip())) == 8, row
    limited = cli("dlq", "list", "--limit", "1", config=dead_letters)
    assert len(limited.stdout.splitlines()) == 2
    assert "(1 of 3 shown, oldest first; --limit N for more)" in limited.stderr
    none = cli("dlq", "list", "--reason", "permanent", config=dead_letters)
    assert (none.returncode, none.stdout, none.stderr.strip()) == (0, "", "no dead letter matches (--reason permanent)")


def test_dlq_purge_dry_run_deletes_nothing(dead_letters: Path) -> None:
    result = cli("dlq", "purge", "--all", "--dry-run", config=dead_letters)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[0] == "ID" and len(lines) == 5
    assert lines[-1] == "dry run: would purge 3 dead letter(s) (all of them); nothing was deleted"
    assert len(dead_letter_ids(dead_letters)) == 3


def test_dlq_purge_all_off_a_terminal_needs_yes(dead_letters: Path) -> None:
    refused = cli("dlq", "purge", "--all", config=dead_letters)  # run_cli: stdin is not a terminal
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "error: dlq purge --all would delete all 3 dead letter(s) and there is no terminal to confirm on: "
        "add --yes (or see them first with --dry-run)"
    )
    assert len(dead_letter_ids(dead_letters)) == 3
    # a filter is a statement of what to delete: scripts keep working without --yes
    first = dead_letter_ids(dead_letters)[0]
    by_id = cli("dlq", "purge", str(first), config=dead_letters)
    assert (by_id.returncode, by_id.stdout.strip()) == (0, "purged 1 dead letter(s)")
    done = cli("dlq", "purge", "--all", "--yes", config=dead_letters)
    assert (done.returncode, done.stdout.strip()) == (0, "purged 2 dead letter(s)")
    assert dead_letter_ids(dead_letters) == []


def purge_on_a_terminal(config: Path, *args: str, answer: bytes) -> tuple[int, str]:
    """`dlq purge` with a pseudo-terminal as stdin, answering `answer` once it asks; (exit code, stderr)."""
    main, child = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "event_router", "dlq", "purge", *args, "-c", str(config)],
        stdin=child,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **ENV},
    )
    os.close(child)
    try:
        assert proc.stderr is not None
        asked = b""
        deadline = time.monotonic() + 30
        while not asked.endswith(b"[y/N] "):  # the question, before anything is read or deleted
            assert time.monotonic() < deadline, asked
            ready, _, _ = select.select([proc.stderr], [], [], 1)
            if ready:
                chunk = os.read(proc.stderr.fileno(), 1024)
                assert chunk, f"exited without asking: {asked!r}"
                asked += chunk
        os.write(main, answer)
        _, rest = proc.communicate(timeout=30)
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, (asked + rest).decode()


def test_dlq_purge_on_a_terminal_asks_first(dead_letters: Path) -> None:
    code, said = purge_on_a_terminal(dead_letters, "--reason", "validation", answer=b"n\n")
    assert code == 1
    assert said.startswith(
        "purge 3 dead letter(s) (--reason validation)? They cannot be replayed afterwards. [y/N] "
    ), said
    assert "not confirmed; nothing purged" in said
    assert len(dead_letter_ids(dead_letters)) == 3

    code, said = purge_on_a_terminal(dead_letters, "--all", answer=b"y\n")
    assert code == 0, said
    assert "purge 3 dead letter(s) (all of them)?" in said
    assert dead_letter_ids(dead_letters) == []


def test_dlq_refuses_a_misspelt_output_or_reason_and_says_when_nothing_matches(
    tmp_path: Path, router_spool: tuple[str, dict[str, str]]
) -> None:
    """Every `dlq` command the same way: an `--output` neither router.toml nor a dead letter has, or a reason
    no dead letter can have, is refused with a guess (exit 2); ids that name no dead letter are an error
    (exit 1; the others are still acted on); a filter that matches nothing is said (exit 0)."""
    spool_line, spool_env = router_spool
    env = {**ENV, **spool_env}
    port = free_port()
    with http_receiver() as rx:
        rx.respond(422)  # crm refuses for good: a permanent dead letter at crm
        config = write_config(tmp_path, port, f"{rx.url}/hooks", spool=spool_line)
        with RouterProcess(config, env=env):
            assert post(f"http://127.0.0.1:{port}/events", invalid(), HEADERS)[0] == 422
            assert post(f"http://127.0.0.1:{port}/events", example("transport.messageReceived"), HEADERS)[0] == 202
            wait_for(lambda: len(rx.requests) == 1, what="crm's refusal")
            wait_for(
                lambda: len(json.loads(run_cli("dlq", "list", "--json", "-c", str(config), env=env).stdout)) == 2,
                what="both dead letters",
            )

    def dlq(*args: str, on: Path = config) -> subprocess.CompletedProcess[str]:
        return run_cli("dlq", *args, "-c", str(on), env=env)

    listed = json.loads(dlq("list", "--json").stdout)
    invalid_id, crm_id = (
        next(r["id"] for r in listed if r["reason"] == reason) for reason in ("validation", "permanent")
    )
    reasons = "validation, unknown_trigger, no_route, undecodable, permanent, retries_exhausted, output_backlog_full"
    for command in ("list", "replay"):
        typo = dlq(command, "--output", "crmm")
        assert (typo.returncode, typo.stdout, typo.stderr.strip()) == (
            2,
            "",
            "error: no output named 'crmm' in router.toml or among the dead letters (outputs: archive, crm); "
            "did you mean 'crm'?",
        ), command
    for command in ("replay", "purge"):
        typo = dlq(command, "--reason", "validaton")
        assert (typo.returncode, typo.stdout, typo.stderr.strip()) == (
            2,
            "",
            f"error: no dead letter reason 'validaton' (reasons: {reasons}); did you mean 'validation'?",
        ), command

    # ids that name no dead letter: an error, as `show` always said
    done = {"list": "", "show": "", "replay": "; nothing replayed", "purge": "; nothing purged"}
    for command, said in done.items():
        missing = dlq(command, "999")
        assert (missing.returncode, missing.stderr.strip()) == (1, f"error: no dead letter matches (id 999){said}")
        assert missing.stdout == ("[]\n" if command == "show" else ""), command
        # a filter that matches nothing: nothing to do, which a script on a schedule takes as success
        nothing = dlq(command, "--reason", "no_route")
        assert (nothing.returncode, nothing.stderr.strip()) == (0, f"no dead letter matches (--reason no_route){said}")
    assert json.loads(dlq("list", "--json", "--reason", "no_route").stdout) == []

    # a trigger no schema knows is taken (such dead letters exist), and warned about with a guess
    typo = dlq("list", "--trigger", "transport.messageRecieved")
    assert typo.returncode == 0
    assert typo.stderr.splitlines() == [
        "warning: --trigger transport.messageRecieved: no schema knows the trigger 'transport.messageRecieved'; "
        "did you mean 'transport.messageReceived'?",
        "no dead letter matches (--trigger transport.messageRecieved)",
    ]

    # the ids that exist are acted on, the others named
    shown = dlq("show", str(invalid_id), "998", "999")
    assert (shown.returncode, shown.stderr.strip()) == (1, "error: no dead letter matches (ids 998, 999)")
    assert [row["id"] for row in json.loads(shown.stdout)] == [invalid_id]
    purged = dlq("purge", str(invalid_id), "999")
    assert (purged.returncode, purged.stdout.strip()) == (1, "purged 1 dead letter(s)")
    assert purged.stderr.strip() == "error: no dead letter matches (id 999)"
    # an id with a filter it does not pass matches nothing
    assert dlq("replay", str(crm_id), "--reason", "validation").returncode == 1

    # an output router.toml no longer has is still one its dead letters name
    without = tmp_path / "without.toml"
    without.write_text(config.read_text().replace("[outputs.crm]", "[outputs.crm2]").replace('["crm"]', '["crm2"]'))
    kept = dlq("list", "--output", "crm", on=without)
    assert (kept.returncode, len(kept.stdout.splitlines())) == (0, 2), kept.stderr
    typo = dlq("list", "--output", "crmm", on=without)
    assert (typo.returncode, typo.stderr.strip()) == (
        2,
        "error: no output named 'crmm' in without.toml or among the dead letters (outputs: archive, crm, crm2); "
        "did you mean 'crm'?",
    )


# --- event-router init ----------------------------------------------------------------------------------------


def test_init_writes_the_admin_endpoint_and_checks(tmp_path: Path) -> None:
    target = tmp_path / "router.toml"
    written = run_cli("init", "-o", str(target))
    assert written.returncode == 0, written.stderr
    starter = tomllib.loads(target.read_text())
    assert starter["router"]["admin"] == {"listen": "127.0.0.1:9187"}
    checked = run_cli("check", "-c", str(target), "--json", env=ENV)
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["ok"] is True


# --- the README's quick start, as pasted ------------------------------------------------------------------------


def readme_block(containing: str) -> str:
    """The first ```sh block of README.md that contains `containing`, without the fence."""
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return str(next(block for block in blocks if containing in block))


def test_readme_curl_works_as_pasted(tmp_path: Path) -> None:
    """The README's curl, run by a shell from the checkout against the shipped router.toml (ports moved to
    free ones): 202, stored, archived, no dead letter; and its `event-router test` of the same file passes."""
    port, admin, crm = free_port(), free_port(), free_port()
    config = tmp_path / "router.toml"
    config.write_text(
        (ROOT / "router.toml")
        .read_text()
        .replace("127.0.0.1:8787", f"127.0.0.1:{port}")
        .replace("127.0.0.1:9187", f"127.0.0.1:{admin}")
        .replace("127.0.0.1:9000", f"127.0.0.1:{crm}")
    )
    curl = readme_block("curl ").replace("127.0.0.1:8787", f"127.0.0.1:{port}")
    key = re.search(r"x-api-key: ([^']+)'", curl)
    assert key is not None, curl
    env = {"ROUTER_WEBHOOK_API_KEY": key.group(1)}
    # the block after it, in the same directory: this Python's router for .venv/bin/event-router
    after = (
        readme_block("event-router test ")
        .replace(".venv/bin/event-router", f"{shlex.quote(sys.executable)} -m event_router")
        .replace("-c router.toml", f"-c {shlex.quote(str(config))}")
    )
    events_file = shlex.split(after.splitlines()[-1])[-1]
    with RouterProcess(config, env=env):
        sent = subprocess.run(["sh", "-c", curl], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.startswith("HTTP/1.1 202"), sent.stdout
        assert json.loads(sent.stdout.strip().splitlines()[-1])["status"] == "accepted"
        lines = wait_for(
            lambda: [line for path in (tmp_path / "var").glob("events-*.jsonl") for line in read_jsonl(path)],
            what="the event archived",
        )
        # a shell without the router's environment, as a second terminal is
        shell_env = {k: v for k, v in os.environ.items() if k != "ROUTER_WEBHOOK_API_KEY"}
        then = subprocess.run(
            ["sh", "-ec", after], cwd=ROOT, env=shell_env, capture_output=True, text=True, timeout=60, check=False
        )
    assert then.returncode == 0, then.stderr
    assert "pending events: 1" in then.stdout  # the CRM delivery, retried (10 attempts) while nothing listens
    assert "test: 1 event(s), none would be dead-lettered" in then.stderr
    assert lines[0]["trigger"] == "transport.messageReceived"
    assert lines[0]["data"] == json.loads((ROOT / events_file).read_text())["data"]
    listing = run_cli("dlq", "list", "--json", "-c", str(config), env=env)
    assert listing.returncode == 0 and json.loads(listing.stdout) == [], listing.stdout + listing.stderr


def test_readme_says_run_stays_in_the_foreground() -> None:
    text = " ".join((ROOT / "README.md").read_text().split())
    assert "stays in the foreground" in text
