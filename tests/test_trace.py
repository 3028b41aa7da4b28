"""`event-router trace` (#20), `dlq show` with each dead letter's attempts: real router processes on both
backends, a real HTTP receiver that answers 503 with a body echoing the api key it was sent, then 200, and the
commands as separate processes beside them. The spool's part: tests/test_spool_attempts.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from event_router.testing import (
    Recorded,
    RouterProcess,
    free_port,
    http_receiver,
    post,
    router_table,
    run_cli,
    wait_for,
    webhook_input,
)
from router_helpers import http_output, numbered_message, route, send_event, spool_rows

KEY = "trace-key"
#: the api key the router sends the receiver (an `x-api-key` header of the http output), which the receiver
#: echoes in its answers: neither `trace` nor `dlq show` may show it
SENT_KEY = "crm-secret-4f1d2b"
ENV = {"ROUTER_WEBHOOK_API_KEY": KEY, "CRM_API_KEY": SENT_KEY}


# --- real routers -------------------------------------------------------------------------------------------


def send(port: int, body: dict[str, object]) -> str:
    return send_event(port, body, KEY)


def echoing(request: Recorded) -> bytes:
    """An answer that echoes the credentials it was sent, as some error pages do."""
    return orjson.dumps({"error": "down for maintenance", "you_sent": request.headers.get("x-api-key")})


def keyed_output(name: str, url: str, extra: str = "") -> str:
    """An http output that sends the api key in `x-api-key`."""
    return http_output(name, f"{url}/in", f'headers = {{ "x-api-key" = {{ env = "CRM_API_KEY" }} }}\n{extra}')


def config_for(
    tmp_path: Path, port: int, spool_line: str, outputs: str, *, retention: str | None, retry: str = ""
) -> Path:
    lines = [spool_line, f'retention = "{retention}"' if retention else ""]
    extra = "\n".join(line for line in lines if line)
    config = tmp_path / "router.toml"
    text = router_table(None, shutdown_timeout="2s", extra=extra)
    if retry:
        text += f"[router.retry]\n{retry}\n"
    config.write_text(text + webhook_input(port) + outputs)
    return config


def trace(config: Path, event_id: str, env: dict[str, str]) -> dict[str, Any]:
    result = run_cli("trace", event_id, "--json", "-c", str(config), env=env)
    assert result.returncode == 0, result.stderr
    assert SENT_KEY not in result.stdout
    parsed: dict[str, Any] = orjson.loads(result.stdout)
    return parsed


def attempts_on_disk(config: Path, env: dict[str, str]) -> int:
    return spool_rows(config, env, "attempts")


@pytest.mark.slow
def test_trace_shows_each_attempt_with_its_status_and_answer_then_delivered(
    tmp_path: Path, router_spool: tuple[str, dict[str, str]]
) -> None:
    """503 with a body that echoes the api key the router sent, then 200: `trace` (beside the running router, and
    once it stopped) shows both attempts, with status, duration and the answer's start, scrubbed, and the
    event delivered and kept (retention on)."""
    spool_line, spool_env = router_spool
    env = {**ENV, **spool_env}
    port = free_port()
    with http_receiver() as crm:
        crm.reply = echoing
        crm.respond(503, 200)
        outputs = keyed_output("crm", crm.url) + route('"crm"', name="to crm")
        config = config_for(tmp_path, port, spool_line, outputs, retention="1d", retry='initial_backoff = "200ms"')
        with RouterProcess(config, env=env):
            event_id = send(port, numbered_message(1))
            wait_for(lambda: len(crm.requests) == 2, what="the 503 and the retry")
            assert all(r.headers["x-api-key"] == SENT_KEY for r in crm.requests)
            found = wait_for(
                lambda: (t := trace(config, event_id, spool_env))["outcome"] == "delivered" and t,
                what="the delivery recorded",
            )
            text = run_cli("trace", event_id, "-c", str(config), env=spool_env)
        after = trace(config, event_id, spool_env)  # the router is stopped: the spool says the same
    assert after["deliveries"] == found["deliveries"]
    assert (found["event_id"], found["trigger"], found["input"]) == (event_id, "transport.messageReceived", "connector")
    assert found["received_at"] and found["meta"], "received, with the webhook's meta"
    assert "data" not in found and "MSG00000000000000001" not in orjson.dumps(found).decode()
    assert found["validation"]["recorded"] is False and found["validation"]["said"].startswith("accepted, so valid")
    assert found["stored"] == "kept" and found["kept_until"]
    assert found["routes"] == ["to crm"]
    ((delivery,),) = [found["deliveries"]]
    assert (delivery["output"], delivery["route"], delivery["state"], delivery["attempts"]) == (
        "crm",
        "to crm",
        "delivered",
        2,
    )
    first, second = delivery["history"]
    assert (first["attempt"], first["outcome"], first["status"]) == (1, "retry", 503)
    assert first["error"].startswith(f"POST http://127.0.0.1:{crm.port}/in answered 503: ")
    assert orjson.loads(first["answer"]) == {"error": "down for maintenance", "you_sent": "***"}
    assert (second["attempt"], second["outcome"], second["status"], second["error"]) == (2, "delivered", 200, None)
    assert orjson.loads(second["answer"]) == {"error": "down for maintenance", "you_sent": "***"}
    for attempt in (first, second):
        assert 0 < attempt["duration_seconds"] < 5
        assert attempt["at"].endswith("Z")
    assert first["at"] < second["at"]
    assert delivery["attempts_not_kept"] == 0

    assert text.returncode == 0, text.stderr
    assert SENT_KEY not in text.stdout
    lines = text.stdout.splitlines()
    assert lines[0] == f"event {event_id}  transport.messageReceived"
    assert any(line.startswith("  received    ") and "on input connector" in line for line in lines)
    assert "delivery " in text.stdout and "-> output crm: delivered (2 attempts)" in text.stdout
    retry_line = next(line for line in lines if line.startswith("  #1  "))
    assert " retry " in retry_line and " 503  POST " in retry_line, retry_line
    assert next(line for line in lines if line.startswith("  #2  ")).split()[3:5] == ["delivered", "200"]
    assert '      answer: {"error":"down for maintenance","you_sent":"***"}' in lines, text.stdout
    assert lines[-1] == "outcome: delivered (crm)"


@pytest.mark.slow
def test_without_retention_the_attempts_go_with_the_delivered_event(
    tmp_path: Path, router_spool: tuple[str, dict[str, str]]
) -> None:
    spool_line, spool_env = router_spool
    env = {**ENV, **spool_env}
    port = free_port()
    with http_receiver() as crm:
        crm.reply = echoing
        crm.respond(503)
        outputs = keyed_output("crm", crm.url) + route('"crm"', name="to crm")
        config = config_for(tmp_path, port, spool_line, outputs, retention=None, retry='initial_backoff = "1s"')
        with RouterProcess(config, env=env):
            event_id = send(port, numbered_message(2))
            wait_for(lambda: crm.requests, what="the first attempt")
            pending = wait_for(
                lambda: (t := trace(config, event_id, spool_env))["deliveries"][0]["history"] and t,
                what="the first attempt recorded",
            )
            assert pending["stored"] == "pending" and pending["outcome"] == "pending"
            ((delivery,),) = [pending["deliveries"]]
            assert delivery["state"] == "pending" and delivery["output_state"] == "active"
            assert delivery["next_attempt_at"] is not None and delivery["attempts"] >= 1
            assert {a["status"] for a in delivery["history"]} == {503}
            assert attempts_on_disk(config, env) >= 1
            crm.respond(200)
            wait_for(lambda: attempts_on_disk(config, env) == 0, what="the attempts forgotten with the event")
            gone = run_cli("trace", event_id, "-c", str(config), env=spool_env)
    assert crm.requests[-1].headers["Idempotency-Key"] == event_id
    assert gone.returncode == 1
    assert gone.stdout == ""
    assert gone.stderr.strip() == (
        f"error: event {event_id}: the spool knows nothing of it: not pending, no dead letter, and not kept "
        "(retention off: a delivered event is forgotten with its last delivery; [router] retention keeps them)"
    )


@pytest.mark.slow
def test_a_dead_lettered_deliverys_attempts_are_in_dlq_show_and_trace(
    tmp_path: Path, router_spool: tuple[str, dict[str, str]]
) -> None:
    spool_line, spool_env = router_spool
    env = {**ENV, **spool_env}
    port = free_port()
    with http_receiver() as crm, http_receiver() as archive:
        crm.reply = echoing
        crm.respond(503)
        outputs = (
            keyed_output("crm", crm.url, 'retry = { max_attempts = 2, initial_backoff = "100ms" }\n')
            + keyed_output("archive", archive.url)
            + route('["crm", "archive"]', name="everything")
        )
        config = config_for(tmp_path, port, spool_line, outputs, retention=None)
        with RouterProcess(config, env=env) as router:
            event_id = send(port, numbered_message(3))
            record = router.wait_log("delivery dead-lettered")
            dlid = record["dead_letter"]
            wait_for(lambda: len(archive.requests) == 1, what="the archive's delivery")
            shown = run_cli("dlq", "show", str(dlid), "-c", str(config), env=spool_env)
            traced = trace(config, event_id, spool_env)
            text = run_cli("trace", event_id, "-c", str(config), env=spool_env)
            # the same id as people paste it: upper case, without hyphens
            pasted = run_cli("trace", event_id.upper().replace("-", ""), "-c", str(config), env=spool_env)
            not_an_id = run_cli("trace", "not-an-id", "-c", str(config), env=spool_env)
            a_dlid = run_cli("trace", str(dlid), "-c", str(config), env=spool_env)
            # an event dead-lettered before any delivery: its dead letter is all there is, and says why
            invalid = numbered_message(4)
            invalid["data"] = {"id": "MSG00000000000000004"}  # no recipients, no content...
            status, answer, _ = post(f"http://127.0.0.1:{port}/events", invalid, {"x-api-key": KEY})
            assert status == 422, answer
            refused = trace(config, str(answer["id"]), spool_env)
    assert shown.returncode == 0, shown.stderr
    assert SENT_KEY not in shown.stdout
    ((letter,),) = [orjson.loads(shown.stdout)]
    assert (letter["id"], letter["reason"], letter["attempts"], letter["attempts_not_kept"]) == (
        dlid,
        "retries_exhausted",
        2,
        0,
    )
    assert [(a["attempt"], a["outcome"], a["status"]) for a in letter["history"]] == [
        (1, "retry", 503),
        (2, "retries_exhausted", 503),
    ]
    assert all(orjson.loads(a["answer"])["you_sent"] == "***" for a in letter["history"])

    # retention off: the event is forgotten once the archive has it; its dead letter (and attempts) remain
    assert traced["stored"] == "not kept (retention off)"
    assert traced["outcome"] == "dead_lettered"
    ((delivery,),) = [traced["deliveries"]]
    assert (delivery["output"], delivery["state"], delivery["dead_letter"], delivery["attempts"]) == (
        "crm",
        "dead_letter",
        dlid,
        2,
    )
    assert delivery["history"] == letter["history"]
    assert traced["dead_letters"] == [], "the dead letter is the delivery's, shown with it"
    assert text.returncode == 0, text.stderr
    assert SENT_KEY not in text.stdout
    assert f"-> output crm: dead letter {dlid} (2 attempts)" in text.stdout
    # the archive had its delivery (not kept: retention off); the command to see crm's dead letter names it
    assert text.stdout.splitlines()[-1] == f"outcome: dead-lettered (dead letter {dlid}: event-router dlq show {dlid})"
    assert (pasted.returncode, pasted.stdout) == (0, text.stdout), pasted.stderr
    # what cannot be an event id is not looked up, and is said to be none (not "the spool knows nothing")
    assert (not_an_id.returncode, not_an_id.stdout) == (2, "")
    assert not_an_id.stderr.startswith("error: 'not-an-id' is not an event id: event ids are UUIDs"), not_an_id.stderr
    assert "knows nothing" not in not_an_id.stderr
    assert a_dlid.returncode == 2
    assert a_dlid.stderr.rstrip().endswith(f"a dead letter's id? event-router dlq show {dlid}"), a_dlid.stderr

    assert (refused["stored"], refused["outcome"], refused["deliveries"], refused["routes"]) == (
        "not kept (retention off)",
        "dead_lettered",
        [],
        [],
    )
    assert refused["validation"]["recorded"] is True and refused["validation"]["valid"] is False
    assert refused["validation"]["said"].startswith("invalid: ")
    ((intake,),) = [refused["dead_letters"]]
    assert (intake["reason"], intake["output"]) == ("validation", None)
    assert intake["error"] in refused["validation"]["said"]


def events_rows(config: Path, env: dict[str, str], event_id: str) -> int:
    """Rows of `event_id` in the spool's events table (pending or kept)."""
    return spool_rows(config, env, "events", event_id=event_id)


@pytest.mark.slow
def test_replays_of_a_kept_event_and_of_its_dead_letter_are_traced_with_it(
    tmp_path: Path, router_spool: tuple[str, dict[str, str]]
) -> None:
    """Retention on, a delivery dead-lettered: `event-router replay` of the kept event, and `dlq replay` of
    another's dead letter, each make a new delivery of the kept event whose attempts `trace` shows; the event
    stays one row, kept. The replayed dead letter's delivery stays in the trace before the replayed one: its
    attempts, when and by whom it was replayed; each delivery numbers its attempts from 1."""
    spool_line, spool_env = router_spool
    env = {**ENV, **spool_env}
    port = free_port()
    with http_receiver() as crm:
        crm.respond(503)
        outputs = (
            http_output("crm", crm.url, 'retry = { max_attempts = 2, initial_backoff = "100ms" }\n')
            + '[[routes]]\nname = "to crm"\nto = "crm"\n'
        )
        config = config_for(tmp_path, port, spool_line, outputs, retention="1d")
        c = ("-c", str(config))
        with RouterProcess(config, env=env) as router:
            # a kept event whose delivery is a dead letter, replayed as a kept event
            first = send(port, numbered_message(5))
            first_dlid = router.wait_log("delivery dead-lettered")["dead_letter"]
            crm.respond(200)
            replayed = run_cli("replay", "--since", "1h", *c, env=spool_env)
            assert replayed.returncode == 0, replayed.stderr
            kept = wait_for(
                lambda: (t := trace(config, first, spool_env))["deliveries"][-1]["state"] == "delivered" and t,
                what="the kept event's replay delivered",
            )
            # another, whose dead letter is replayed
            crm.respond(503)
            second = send(port, numbered_message(6))
            second_dlid = router.wait_log("delivery dead-lettered", count=2)["dead_letter"]
            crm.respond(503, 200)
            again = run_cli("dlq", "replay", str(second_dlid), *c, env=spool_env)
            assert again.returncode == 0, again.stderr
            traced = wait_for(
                lambda: (t := trace(config, second, spool_env))["outcome"] == "delivered" and t,
                what="the replayed dead letter delivered and its attempts recorded",
            )
            text = run_cli("trace", second, *c, env=spool_env)
            rows = (events_rows(config, env, first), events_rows(config, env, second))

    assert kept["stored"] == "kept"
    by_state = {d["state"]: d for d in kept["deliveries"]}
    assert set(by_state) == {"dead_letter", "delivered"}
    assert by_state["dead_letter"]["dead_letter"] == first_dlid
    assert [a["outcome"] for a in by_state["dead_letter"]["history"]] == ["retry", "retries_exhausted"]
    assert [(a["attempt"], a["outcome"], a["status"]) for a in by_state["delivered"]["history"]] == [
        (1, "delivered", 200)
    ]

    assert traced["stored"] == "kept" and traced["kept_until"]
    assert traced["dead_letters"] == [], "replayed: the dead letter is gone"
    earlier, delivery = traced["deliveries"]
    assert (earlier["output"], earlier["state"], earlier["dead_letter"], earlier["attempts"]) == (
        "crm",
        "replayed",
        second_dlid,
        2,
    )
    assert [(a["attempt"], a["outcome"], a["status"]) for a in earlier["history"]] == [
        (1, "retry", 503),
        (2, "retries_exhausted", 503),
    ]
    replay = earlier["replay"]
    assert (replay["dead_letter"], replay["reason"], replay["replayed_as"]) == (
        second_dlid,
        "retries_exhausted",
        delivery["id"],
    )
    assert replay["replayed_by"].endswith(" (event-router dlq replay)")
    assert traced["replays"] == [replay]
    assert (delivery["output"], delivery["state"], delivery["attempts"]) == ("crm", "delivered", 2)
    assert [(a["attempt"], a["outcome"], a["status"]) for a in delivery["history"]] == [
        (1, "retry", 503),
        (2, "delivered", 200),
    ]
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    head = f'delivery {earlier["id"]}: route "to crm" -> output crm: dead letter {second_dlid} (2 attempts, '
    (at,) = [n for n, line in enumerate(lines) if line.startswith(head)]
    assert (
        lines[at].endswith(f" as delivery {delivery['id']}")
        and f"), replayed {replay['replayed_at']} by " in (lines[at])
    )
    # the earlier delivery's attempts, then the replayed one's, numbered from 1 again
    shown = [line.split()[0] for line in lines[at:] if line.startswith(("  #", "delivery "))]
    assert shown == ["delivery", "#1", "#2", "delivery", "#1", "#2"], text.stdout
    assert f'delivery {delivery["id"]}: route "to crm" -> output crm: delivered (2 attempts)' in lines
    assert lines[-1] == "outcome: delivered (crm)"
    assert rows == (1, 1), "each event kept once: no copy stored by the replays"


def test_a_delivery_waiting_behind_its_ordering_key_says_so() -> None:
    """A keyed delivery behind an earlier one of its key has no due time (BLOCKED, infinite): trace says what
    it waits for instead of a time (which it could not print) or 'due now'."""
    import math

    from event_router.core.spool import BLOCKED, DeliveryHistory
    from event_router.ops.trace import _delivery, _delivery_state

    waiting = DeliveryHistory(7, "crm", "messages", "pending", 0, next_attempt_in=BLOCKED - 5.0)
    shown = _delivery(waiting, {}, time.time())
    assert shown["waiting_for_ordering_key"] is True
    assert shown["next_attempt_at"] is None and shown["next_attempt_in_seconds"] is None
    assert orjson.loads(orjson.dumps(shown))["id"] == 7  # JSON without an infinity in it
    assert _delivery_state(shown) == "pending (0 attempts), waiting behind an earlier delivery of its ordering key"
    due = DeliveryHistory(8, "crm", "messages", "pending", 1, next_attempt_in=-1.0)
    assert _delivery_state(_delivery(due, {}, time.time())).startswith("pending (1 attempt), next attempt ")
    assert not math.isinf(_delivery(due, {}, time.time())["next_attempt_in_seconds"])


def test_the_outcome_names_only_the_dead_letters_there_are() -> None:
    """A delivery dead-lettered (1), replayed, dead-lettered again (2): the outcome line's `dlq show` names 2
    only, as 1 is gone with its replay (pasting `dlq show 1 2` would fail on 1)."""
    from event_router.ops.trace import _outcome_line

    trace = {
        "outcome": "dead_lettered",
        "dead_letters": [],
        "deliveries": [
            {"id": 3, "output": "crm", "state": "replayed", "dead_letter": 1},
            {"id": 4, "output": "crm", "state": "dead_letter", "dead_letter": 2},
        ],
    }
    assert _outcome_line(trace) == "dead-lettered (dead letter 2: event-router dlq show 2)"
