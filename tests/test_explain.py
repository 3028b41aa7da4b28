"""`event-router explain EVENT.json`, the real command on real files: which routes match, and for each that
does not, the first condition that fails with the value the event has there."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from event_router.testing import ROOT, example, run_cli

CONFIG = """
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:8787"

[outputs.crm]
type = "http"
url = "http://127.0.0.1:9000/hooks/{{trigger}}"
[outputs.archive]
type = "file"
path = "./var/events.jsonl"

[[routes]]
name = "pending relationships"
match = { trigger = "transport.relationshipChanged", "data.status" = ["Pending"] }
to = "crm"

[[routes]]
name = "mail summary"
match = { trigger = "transport.messageReceived", "data.content.@type" = "Mail", "data.wasReadAt" = [{ exists = true }] }
to = "crm"
[routes.reshape]
subject = "data.content.subject"

[[routes]]
name = "people to look at"
to = "crm"
[[routes.match."$or"]]
trigger = "consumption.incomingRequestStatusChanged"
[[routes.match."$or"]]
"data.content.@type" = "Request"

[[routes]]
name = "messages"
match = { trigger = "transport.messageReceived" }
to = "archive"
stop = true
[routes.reshape]
message = "data.id"
first = "data.recipients.0.address"

[[routes]]
name = "everything"
to = "archive"
"""


def _setup(tmp_path: Path) -> Path:
    config = tmp_path / "router.toml"
    config.write_text(CONFIG)
    return config


def test_a_matching_event_says_which_routes_match_and_each_delivery(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    event = tmp_path / "mail.json"
    shutil.copy(ROOT / "examples" / "message-received.json", event)
    result = run_cli("explain", "-c", str(config), str(event))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f'{event}: transport.messageReceived (input "connector")'
    assert lines[1] == "  validation: valid (transport.messageReceived)"
    assert (
        '  routes[0] "pending relationships": no match: match.trigger = "transport.relationshipChanged" does not '
        'hold: the event has "transport.messageReceived"'
    ) in lines
    # the first condition in the order written that fails; a missing field is said to be missing
    assert (
        '  routes[1] "mail summary": no match: match.data.wasReadAt = [{ exists = true }] does not hold: the event '
        "has nothing (the field is missing)"
    ) in lines
    assert '  routes[2] "people to look at": no match: no branch of match.$or matches' in lines
    assert (
        '      match.$or[0].trigger = "consumption.incomingRequestStatusChanged" does not hold: the event has '
        '"transport.messageReceived"'
    ) in lines
    assert '      match.$or[1].data.content.@type = "Request" does not hold: the event has "Mail"' in lines
    at = lines.index('  routes[3] "messages": matched, stop = true: no later route is tried')
    assert lines[at + 1] == "    -> archive (file)"
    # the file output's line around the route's reshaped payload
    assert lines[at + 3].startswith('       line: {"id":"') and lines[at + 3].endswith(
        '"route":"messages","payload":{"message":"MSGNNKP7VFRCT9S2DYVE",'
        '"first":"did:e:backbone.example.org:dids:71d2c295ff91728b4b031d"}}'
    )
    assert lines[at + 4] == '  routes[4] "everything": not tried: routes[3] ("messages") matched and has stop = true'


def test_a_non_matching_event_and_the_json_form(tmp_path: Path) -> None:
    """An event in the documented {namespace, data} form that no route but the catch-all takes; the JSON
    report has what the text says, values in full."""
    config = _setup(tmp_path)
    relationship = example("transport.relationshipChanged")
    relationship["data"]["status"] = "Active"
    event = tmp_path / "events.json"
    event.write_text(json.dumps([{"namespace": relationship["trigger"], "data": relationship["data"]}]))
    result = run_cli("explain", "-c", str(config), str(event))
    assert result.returncode == 0, result.stderr
    assert (
        '  routes[0] "pending relationships": no match: match.data.status = ["Pending"] does not hold: the event '
        'has "Active"'
    ) in result.stdout.splitlines()
    as_json = run_cli("explain", "-c", str(config), str(event), "--json")
    assert as_json.returncode == 0, as_json.stderr
    (report,) = json.loads(as_json.stdout)
    assert report["event"] == f"{event}[0]" and report["trigger"] == "transport.relationshipChanged"
    first, *_, last = report["routes"]
    assert first["outcome"] == "no match"
    assert first["failed"] == {
        "condition": "match.data.status",
        "wants": ["Pending"],
        "saw": "Active",
        "missing": False,
    }
    assert last["route"] == "everything" and last["outcome"] == "matched"
    (delivery,) = last["deliveries"]
    assert delivery["output"] == "archive" and delivery["payload"]["data"]["status"] == "Active"
    assert report["dead_letter"] is None


def test_an_invalid_event_is_a_dead_letter_before_any_route(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    event = tmp_path / "bad.json"
    event.write_text(json.dumps({"trigger": "transport.relationshipChanged", "data": {"status": "Sleeping"}}))
    result = run_cli("explain", "-c", str(config), str(event))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].startswith("  validation: invalid (transport.relationshipChanged): ")
    assert '  routes[0] "pending relationships": not tried: the event is a dead letter before routing' in lines
    assert lines[-1].startswith("  dead letter (validation): ")


def test_an_unusable_events_file_fails(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    event = tmp_path / "bad.json"
    event.write_text(json.dumps({"data": {}}))
    result = run_cli("explain", "-c", str(config), str(event))
    assert result.returncode == 1
    assert f'error: {event} is not {{"trigger": "...", "data": ...}} (as the Connector' in result.stderr
