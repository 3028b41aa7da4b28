"""Pausing an output and its breaker, against real router processes, a real HTTP receiver and the real CLI, on
each spool backend: a paused output keeps its backlog, sends nothing and counts no attempt, also across a
restart, and delivers it all once resumed; a breaker holds an output that keeps failing for its cool-down and
then probes it with one delivery (the receiver counts the requests)."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest

from event_router.testing import (
    Receiver,
    Recorded,
    RouterProcess,
    free_port,
    http_receiver,
    run_cli,
    wait_for,
)
from router_helpers import metric, numbered_message, send_event, status_json

KEY = "output-control-key"
ENV = {"OUTPUT_CONTROL_KEY": KEY}


def config_text(port: int, admin: int, url: str, *, spool: str = "", crm: str = "", data_dir: str = "./var") -> str:
    return f"""
[router]
data_dir = "{data_dir}"
shutdown_timeout = "5s"
{spool}
[router.admin]
listen = "127.0.0.1:{admin}"
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:{port}"
api_key = {{ env = "OUTPUT_CONTROL_KEY" }}
[outputs.crm]
type = "http"
url = "{url}"
timeout = "5s"
retry = {{ initial_backoff = "50ms", max_backoff = "100ms", max_attempts = 1000 }}
{crm}
[[routes]]
name = "all"
to = ["crm"]
"""


def send(port: int, n: int) -> str:
    return send_event(port, numbered_message(n), KEY)


def request(url: str, method: str = "GET") -> tuple[int, Any]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def delivered_ids(rx: Receiver) -> set[str]:
    """The ids of the events the receiver got (it answers 200 to each)."""
    with rx.lock:
        return {str(r.json()["id"]) for r in rx.requests}


class RouterPlace(NamedTuple):
    """Where a test's router runs: its spool's `[router]` line, its environment (the spool's with `ENV`), its
    webhook's and admin endpoint's ports and its router.toml (not written yet)."""

    spool_line: str
    env: dict[str, str]
    port: int
    admin: int
    config: Path


@pytest.fixture
def place(tmp_path: Path, router_spool: tuple[str, dict[str, str]]) -> RouterPlace:
    """A router's place on each spool backend."""
    spool_line, spool_env = router_spool
    return RouterPlace(spool_line, {**ENV, **spool_env}, free_port(), free_port(), tmp_path / "router.toml")


def test_a_paused_output_keeps_its_backlog_across_a_restart_and_resume_delivers_it(place: RouterPlace) -> None:
    spool_line, env, port, admin, config = place
    with http_receiver() as rx:
        config.write_text(config_text(port, admin, f"{rx.url}/in", spool=spool_line))
        router = RouterProcess(config, env=env).start()
        try:
            first = send(port, 0)
            wait_for(lambda: len(rx.requests) == 1, what="the first event delivered")
            paused = run_cli("output", "pause", "crm", "-c", str(config), env=env)
            assert paused.returncode == 0, paused.stderr
            assert paused.stdout.startswith("paused crm: routers on this spool start none of its deliveries"), (
                paused.stdout
            )
            wait_for(lambda: metric(admin, "output_paused", output="crm") == 1, timeout=5, what="the router follows")
            router.wait_log("output paused")
            held = {send(port, n) for n in range(1, 6)}
            time.sleep(2.5)  # more than the routers' poll of the states, and many retry backoffs
            assert len(rx.requests) == 1, "a paused output sends nothing"
            assert metric(admin, "deliveries_total", output="crm", outcome="retry") == 0, "and counts no attempt"
            assert metric(admin, "deliveries_pending", output="crm") == 5
            shown = status_json(config, env)["outputs"]["crm"]
            assert (shown["pending"], shown["retrying"], shown["paused"]) == (5, 0, True), shown
            assert shown["paused_by"].endswith("(event-router output pause)"), shown
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", shown["paused_at"]), shown
            text = run_cli("status", "-c", str(config), env=env).stdout
            header = next(line for line in text.splitlines() if line.startswith("OUTPUT "))
            row = next(line for line in text.splitlines() if line.startswith("crm "))
            assert row[header.index("STATE") :].startswith("paused "), text
            assert f"crm: paused since {shown['paused_at']} by {shown['paused_by']}" in text, text
            again = run_cli("output", "pause", "crm", "-c", str(config), env=env)
            assert again.stdout.strip() == f"crm is paused already since {shown['paused_at']} by {shown['paused_by']}"

            # the pause is the spool's: a restarted router keeps it from its first moment
            assert router.terminate() == 0
            router = RouterProcess(config, env=env).start()
            held.add(send(port, 6))
            time.sleep(2.0)
            assert len(rx.requests) == 1, "still paused after the restart"
            assert metric(admin, "output_paused", output="crm") == 1

            code, answer = request(f"http://127.0.0.1:{admin}/outputs/crm/resume", "POST")
            assert code == 200, answer
            assert (answer["output"], answer["changed"], answer["paused"]) == ("crm", True, False), answer
            wait_for(lambda: delivered_ids(rx) == {first, *held}, timeout=15, what="the backlog delivered")
            wait_for(lambda: metric(admin, "deliveries_pending", output="crm") == 0, timeout=5, what="nothing left")
            assert metric(admin, "deliveries_total", output="crm", outcome="retry") == 0
            assert metric(admin, "output_paused", output="crm") == 0
            router.wait_log("output resumed")
            assert status_json(config, env)["outputs"]["crm"]["paused"] is False
        finally:
            router.terminate()


def test_pause_lets_the_delivery_in_flight_finish_holds_across_a_reload_and_names_the_outputs(
    place: RouterPlace,
) -> None:
    spool_line, env, port, admin, config = place

    def slow(_: Recorded, handler: BaseHTTPRequestHandler) -> None:
        time.sleep(1.5)  # the delivery is in flight meanwhile
        handler.send_response(200)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    with http_receiver(slow) as rx:
        config.write_text(config_text(port, admin, f"{rx.url}/in", spool=spool_line))
        with RouterProcess(config, env=env) as router:
            send(port, 0)
            wait_for(lambda: len(rx.requests) == 1, what="the delivery in flight")
            code, answer = request(f"http://127.0.0.1:{admin}/outputs/crm/pause", "POST")
            assert code == 200, answer
            assert (answer["paused"], answer["paused_by"]) == (True, "admin endpoint (127.0.0.1)"), answer
            # the delivery begun before the pause ends and is recorded
            wait_for(
                lambda: metric(admin, "deliveries_total", output="crm", outcome="delivered") == 1,
                timeout=10,
                what="the delivery in flight recorded",
            )
            # a reload that restarts the output keeps it paused: the gate is the output's, not its worker's
            config.write_text(config.read_text().replace('timeout = "5s"', 'timeout = "4s"'))
            reloaded = run_cli("reload", "-c", str(config), env=env)
            assert reloaded.returncode == 0, reloaded.stderr
            assert router.wait_log("configuration reloaded")["restarted"] == ["outputs.crm"]
            for n in range(1, 4):
                send(port, n)
            time.sleep(2.0)
            assert len(rx.requests) == 1
            code, listed = request(f"http://127.0.0.1:{admin}/outputs")
            assert code == 200
            crm = listed["outputs"]["crm"]
            assert (crm["paused"], crm["paused_by"], crm["pending"], crm["in_flight"], crm["breaker"]) == (
                True,
                "admin endpoint (127.0.0.1)",
                3,
                0,
                "off",
            ), crm

            code, answer = request(f"http://127.0.0.1:{admin}/outputs/nope/pause", "POST")
            assert (code, answer) == (404, {"error": "no output named 'nope' (outputs: crm)"})
            unknown = run_cli("output", "resume", "nope", "-c", str(config), env=env)
            assert (unknown.returncode, unknown.stderr.strip()) == (1, "error: no output named 'nope' (outputs: crm)")

            resumed = run_cli("output", "resume", "crm", "-c", str(config), env=env)
            assert resumed.returncode == 0, resumed.stderr
            assert resumed.stdout.startswith("resumed crm"), resumed.stdout
            wait_for(lambda: len(rx.requests) == 4, timeout=15, what="the three held deliveries")
            assert run_cli("output", "resume", "crm", "-c", str(config), env=env).stdout.strip() == "crm is not paused"


def test_an_output_removed_while_paused_can_be_resumed(place: RouterPlace) -> None:
    """`status` tells to resume a paused output that router.toml no longer has: `output resume` takes it (else
    its pause would stay in the spool and hold the output again once it is back); pausing it is refused."""
    spool_line, env, port, admin, config = place
    config.write_text(config_text(port, admin, "http://127.0.0.1:9/in", spool=spool_line))
    with RouterProcess(config, env=env):  # makes the spool
        paused = run_cli("output", "pause", "crm", "-c", str(config), env=env)
        assert paused.returncode == 0, paused.stderr
    # the same spool, crm renamed crm2
    without = config.with_name("without.toml")
    without.write_text(config.read_text().replace("[outputs.crm]", "[outputs.crm2]").replace('["crm"]', '["crm2"]'))
    shown = run_cli("status", "-c", str(without), env=env)
    assert "crm: paused since" in shown.stdout and "resume: event-router output resume crm" in shown.stdout, shown
    repaused = run_cli("output", "pause", "crm", "-c", str(without), env=env)
    assert (repaused.returncode, repaused.stderr.strip()) == (
        1,
        "error: no output named 'crm' (outputs: crm2); did you mean 'crm2'?",
    )
    resumed = run_cli("output", "resume", "crm", "-c", str(without), env=env)
    assert (resumed.returncode, resumed.stderr) == (0, ""), resumed
    assert resumed.stdout.startswith("resumed crm"), resumed.stdout
    assert "paused" not in run_cli("status", "-c", str(without), env=env).stdout
    unknown = run_cli("output", "resume", "nope", "-c", str(without), env=env)
    assert (unknown.returncode, unknown.stderr.strip()) == (1, "error: no output named 'nope' (outputs: crm2)")
    # and so does a running router's admin endpoint (paused again beside no router, with the old file)
    assert run_cli("output", "pause", "crm", "-c", str(config), env=env).returncode == 0
    with RouterProcess(without, env=env):
        url = f"http://127.0.0.1:{admin}/outputs/crm"
        with urllib.request.urlopen(urllib.request.Request(url + "/resume", method="POST", data=b""), timeout=10) as r:
            answer = json.loads(r.read())
        assert answer == {"output": "crm", "changed": True, "configured": False, "paused": False}, answer
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url + "/pause", method="POST", data=b""), timeout=10)
        assert refused.value.code == 404
    assert "paused" not in run_cli("status", "-c", str(without), env=env).stdout


def test_output_retry_makes_the_deliveries_waiting_for_a_retry_due_without_the_admin_endpoint(
    tmp_path: Path, router_spool: tuple[str, dict[str, str]]
) -> None:
    """`event-router output retry NAME` is the admin endpoint's `POST /outputs/NAME/retry` (the console's
    "Retry now") done in the spool, as `output pause` is: the running router tries a delivery that waits
    hours for its retry within a second or two; a paused output still holds it; `resume` says that a
    failed delivery keeps its retry's time and how to try it now."""
    spool_line, spool_env = router_spool
    env = {**ENV, **spool_env}
    port, admin = free_port(), free_port()
    config = tmp_path / "router.toml"

    def output(*args: str) -> tuple[int, list[str]]:
        done = run_cli("output", *args, "-c", str(config), env=env)
        assert done.stderr == "" or done.returncode != 0, done.stderr
        return done.returncode, (done.stdout or done.stderr).splitlines()

    with http_receiver() as rx:
        rx.respond(503, 200)  # the first attempt fails; the retry goes through
        text = config_text(port, admin, f"{rx.url}/in", spool=spool_line)
        # full jitter: a retry waits anything up to a day, seconds only once in thousands of runs
        text = text.replace(
            'initial_backoff = "50ms", max_backoff = "100ms"', 'initial_backoff = "1d", max_backoff = "1d"'
        )
        config.write_text(text)
        with RouterProcess(config, env=env):
            assert output("retry", "crm") == (0, ["no delivery of crm waits for a retry: nothing made due"])
            first = send(port, 0)
            wait_for(lambda: status_json(config, env)["outputs"]["crm"]["retrying"] == 1, what="the failed attempt")
            assert output("retry", "crmm") == (1, ["error: no output named 'crmm' (outputs: crm); did you mean 'crm'?"])
            assert output("retry", "crm") == (
                0,
                ["made 1 delivery of crm due now: routers on this spool try them within 1s"],
            )
            wait_for(lambda: delivered_ids(rx) == {first}, timeout=10, what="the retry, ten minutes early")
            assert output("retry", "crm") == (0, ["no delivery of crm waits for a retry: nothing made due"])

            # paused: made due all the same, and held until resumed
            rx.respond(503, 200)
            second = send(port, 1)
            wait_for(lambda: status_json(config, env)["outputs"]["crm"]["retrying"] == 1, what="the second's failure")
            assert output("pause", "crm")[0] == 0
            wait_for(lambda: metric(admin, "output_paused", output="crm") == 1, timeout=5, what="the router follows")
            assert output("retry", "crm") == (
                0,
                [
                    "made 1 delivery of crm due now: routers on this spool try them within 1s",
                    "crm is paused: they wait until it is resumed (event-router output resume crm)",
                ],
            )
            time.sleep(2.0)  # more than the routers' poll of the states and of due deliveries
            assert len(rx.requests) == 3, "a paused output sends nothing"
            assert output("resume", "crm") == (
                0,
                ["resumed crm: routers on this spool deliver its backlog again within 1s"],
            )
            wait_for(lambda: delivered_ids(rx) == {first, second}, timeout=10, what="the second delivered")
            # and its outcome committed: the receiver has it before the spool forgets its row, which (tried
            # once, due now) would pass for the third's failure below and be the backlog's next retry
            wait_for(lambda: status_json(config, env)["outputs"]["crm"]["pending"] == 0, what="the second settled")

            # a resume says that a failed delivery keeps its retry's time
            rx.respond(503, 200)
            third = send(port, 2)
            wait_for(lambda: status_json(config, env)["outputs"]["crm"]["retrying"] == 1, what="the third's failure")
            assert output("pause", "crm")[0] == 0
            code, said = output("resume", "crm")
            assert code == 0 and said[0].startswith("resumed crm"), said
            assert re.fullmatch(
                r"its deliveries that failed before keep the time of their retry \(the next in [\dsmhd]+\); "
                r"to try them now: event-router output retry crm",
                said[1],
            ), said
            assert output("retry", "crm")[0] == 0
            wait_for(lambda: delivered_ids(rx) == {first, second, third}, timeout=10, what="the third delivered")


def test_every_router_on_a_postgresql_spool_follows_a_pause(tmp_path: Path, pg_dsn: str) -> None:
    env = {**ENV, "ROUTER_PG_DSN": pg_dsn}
    spool_line = 'spool = { backend = "postgresql", dsn = { env = "ROUTER_PG_DSN" } }'
    with http_receiver() as rx:
        ports, configs = [], []
        for name in ("one", "two"):
            (tmp_path / name).mkdir()
            port = free_port()
            config = tmp_path / name / "router.toml"
            config.write_text(config_text(port, free_port(), f"{rx.url}/in", spool=spool_line))
            ports.append(port)
            configs.append(config)
        with RouterProcess(configs[0], env=env), RouterProcess(configs[1], env=env):
            paused = run_cli("output", "pause", "crm", "-c", str(configs[0]), env=env)
            assert paused.returncode == 0, paused.stderr
            time.sleep(1.5)  # both routers read the states again meanwhile
            held = {send(port, n) for n, port in enumerate(ports * 3)}
            time.sleep(2.0)
            assert rx.requests == [], "neither router sends"
            assert status_json(configs[1], env)["outputs"]["crm"]["pending"] == 6
            assert run_cli("output", "resume", "crm", "-c", str(configs[1]), env=env).returncode == 0
            wait_for(lambda: delivered_ids(rx) == held, timeout=15, what="both routers' backlog delivered")


def test_a_breaker_holds_a_failing_output_for_its_cool_down_and_probes_it_with_one_delivery(place: RouterPlace) -> None:
    spool_line, env, port, admin, config = place
    failing = True

    def answer(_: Recorded, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(503 if failing else 200)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    with http_receiver(answer) as rx:
        crm = 'concurrency = 1\nbreaker = { failures = 3, cool_down = "3s" }'
        config.write_text(config_text(port, admin, f"{rx.url}/in", spool=spool_line, crm=crm))
        with RouterProcess(config, env=env) as router:
            sent = {send(port, n) for n in range(6)}
            opened = router.wait_log("output breaker opened")
            assert (opened["output"], opened["failures"], opened["cool_down"]) == ("crm", 3, 3.0), opened
            assert "503" in opened["error"], opened
            time.sleep(1.0)  # within the cool-down: nothing more is attempted
            assert len(rx.requests) == 3, [r.at for r in rx.requests]
            assert metric(admin, "output_breaker_open", output="crm") == 1
            assert metric(admin, "output_breaker_openings_total", output="crm") == 1
            assert metric(admin, "deliveries_total", output="crm", outcome="retry") == 3
            shown = status_json(config, env)["outputs"]["crm"]
            assert (shown["breaker"], shown["pending"], shown["paused"]) == ("open", 6, False), shown
            assert shown["breaker_router"] and "503" in shown["breaker_error"], shown
            text = run_cli("status", "-c", str(config), env=env).stdout
            assert f"crm: breaker open since {shown['breaker_opened_at']} on router {shown['breaker_router']}" in text
            # a retry due meanwhile is not sent: the NEXT RETRY column says what holds it
            assert "held: breaker open until its probe" in text, text

            # after the cool-down one probe, which fails: held for another cool-down, again one probe
            wait_for(lambda: len(rx.requests) == 5, timeout=15, what="two probes")
            # the second probe's failure recorded before the receiver recovers
            wait_for(
                lambda: metric(admin, "deliveries_total", output="crm", outcome="retry") == 5,
                timeout=5,
                what="the second probe failed",
            )
            router.wait_log("output breaker probe failed")
            times = [r.at for r in rx.requests]
            assert times[3] - times[2] >= 2.9 and times[4] - times[3] >= 2.9, times
            assert metric(admin, "output_breaker_openings_total", output="crm") == 1, "a failed probe is no new opening"

            failing = False  # the receiver is back: the next probe closes the breaker and the backlog flows
            wait_for(lambda: metric(admin, "deliveries_pending", output="crm") == 0, timeout=10, what="drained")
            closed = router.wait_log("output breaker closed")
            assert closed["output"] == "crm" and closed["open_seconds"] >= 6, closed
            with rx.lock:
                answered = [r.json()["id"] for r in rx.requests[5:]]
            assert set(answered) == sent and len(answered) == 6, "after the probe each delivery once"
            assert metric(admin, "output_breaker_open", output="crm") == 0
            assert metric(admin, "deliveries_total", output="crm", outcome="retry") == 5, "no attempt without a request"
            wait_for(
                lambda: status_json(config, env)["outputs"]["crm"]["breaker"] == "closed",
                timeout=5,
                what="status shows the breaker closed",
            )
