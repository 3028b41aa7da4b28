"""A reload applies every `[router]` key it can, and says which it cannot: the admin endpoint moves to a
changed `[router.admin] listen` (the new address listens before the old one stops; one that cannot listen
refuses the reload), `[router] retry` reaches the outputs that inherit it, `log_level` applies; and
`event-router reload -c` says plainly what it could not do."""

from __future__ import annotations

import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from event_router.testing import (
    RouterProcess,
    example,
    free_port,
    http_receiver,
    post,
    run_cli,
    wait_for,
)

pytestmark = pytest.mark.slow

KEY = "reload-key"
ENV = {"ROUTER_WEBHOOK_API_KEY": KEY}


def config_text(hook: int, admin: int | None, crm_url: str = "http://127.0.0.1:9", *, router: str = "") -> str:
    admin_table = f'[router.admin]\nlisten = "127.0.0.1:{admin}"\n' if admin is not None else ""
    return f"""
[router]
data_dir = "./var"
shutdown_timeout = "2s"
{router}
{admin_table}
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:{hook}"
api_key = {{ env = "ROUTER_WEBHOOK_API_KEY" }}
[outputs.crm]
type = "http"
url = "{crm_url}/in"
[[routes]]
name = "mail to crm"
match = {{ trigger = ["transport.messageReceived"] }}
to = ["crm"]
"""


def answers(port: int) -> bool:
    """Whether an admin endpoint answers /healthz on loopback `port`."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def post_reload(port: int, config: Path) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/reload", method="POST", data=b"")
    request.add_header("Event-Router-Config", urllib.parse.quote(str(config.resolve()), safe="/"))
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def send(hook: int, trigger: str = "transport.messageReceived") -> None:
    status, body, _ = post(f"http://127.0.0.1:{hook}/events", example(trigger), {"x-api-key": KEY})
    assert status == 202, body


def test_a_reload_moves_the_admin_endpoint_to_its_new_address(tmp_path: Path) -> None:
    """SIGHUP after `[router.admin] listen` changed: the endpoint listens on the new port, and no longer on the
    old. `reload -c` with the changed file cannot reach the router before that, and says what to do instead.
    A reload asked through the endpoint that moves answers from there; one that removes `[router.admin]`
    stops the endpoint."""
    hook, first, second, third = free_port(), free_port(), free_port(), free_port()
    config = tmp_path / "router.toml"
    config.write_text(config_text(hook, first))
    with RouterProcess(config, env=ENV) as router:
        assert answers(first)
        config.write_text(config_text(hook, second))
        # the router still listens where it was started: the changed file's address reaches nothing
        missed = run_cli("reload", "-c", str(config), env=ENV)
        assert missed.returncode == 1
        assert missed.stderr.splitlines() == [
            f"error: no router answers on 127.0.0.1:{second}, the [router.admin] listen of {config} "
            "(connection refused).",
            "A running router listens at the admin address of the file it was started (or last reloaded) with: "
            "if that was another, reload it with `event-router reload --pid PID` or `systemctl reload "
            "event-router`.",
        ], missed.stderr
        assert "urlopen" not in missed.stderr and "Errno" not in missed.stderr
        assert answers(first)

        router.reload()  # SIGHUP, as the error says
        reloaded = router.wait_log("configuration reloaded")
        assert reloaded["restarted"] == ["router.admin"] and reloaded["warnings"] == [], reloaded
        assert answers(second)
        wait_for(lambda: not answers(first), what="the old address no longer answering")
        listening = [r["listen"] for r in router.log_records() if r.get("msg") == "admin endpoint listening"]
        assert listening == [f"127.0.0.1:{first}", f"127.0.0.1:{second}"], listening
        mine = run_cli("reload", "-c", str(config), env=ENV)  # the file's address is the router's again
        assert mine.returncode == 0 and mine.stdout.strip() == "reloaded", mine.stderr

        # asked through the endpoint that moves: it answers, then stops
        config.write_text(config_text(hook, third))
        status, body = post_reload(second, config)
        assert (status, body) == (200, {"reloaded": True, "errors": [], "warnings": []}), body
        assert answers(third)
        wait_for(lambda: not answers(second), what="the second address no longer answering")

        config.write_text(config_text(hook, None))
        status, body = post_reload(third, config)
        assert (status, body["reloaded"]) == (200, True), body
        wait_for(lambda: not answers(third), what="the endpoint stopped")
        send(hook)  # the router runs on
        assert router.terminate() == 0


def test_a_reload_whose_admin_address_cannot_listen_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    """The new address is in use: the reload is refused naming it (nothing of the file applied: the new
    output does not appear), the endpoint goes on at the old address. Once the address is free, the same
    file reloads."""
    hook, admin = free_port(), free_port()
    config = tmp_path / "router.toml"
    config.write_text(config_text(hook, admin))
    with RouterProcess(config, env=ENV) as router, socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        extra = '[outputs.extra]\ntype = "file"\npath = "./var/extra.jsonl"\n[[routes]]\nname = "all"\nto = "extra"\n'
        config.write_text(config_text(hook, taken) + extra)
        status, body = post_reload(admin, config)
        error = f"router.toml: router.admin.listen: 127.0.0.1:{taken} is already in use"
        assert (status, body) == (422, {"reloaded": False, "errors": [error], "warnings": []}), body
        refused = router.wait_log("reload refused")
        assert refused["errors"] == [error], refused
        assert answers(admin)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/outputs", timeout=5) as response:
            assert list(orjson.loads(response.read())["outputs"]) == ["crm"]
        holder.close()
        status, body = post_reload(admin, config)
        assert (status, body["reloaded"]) == (200, True), body
        assert answers(taken)
        with urllib.request.urlopen(f"http://127.0.0.1:{taken}/outputs", timeout=5) as response:
            assert sorted(orjson.loads(response.read())["outputs"]) == ["crm", "extra"]
        assert router.terminate() == 0


def test_a_reload_applies_router_retry_to_the_outputs_that_inherit_it_and_log_level(tmp_path: Path) -> None:
    """`[router] retry` changed, the output's table not: the output is not restarted, and its next delivery
    follows the new policy. `log_level` changed: the router logs at the new level at once."""
    hook, admin = free_port(), free_port()
    config = tmp_path / "router.toml"
    with http_receiver() as crm:
        crm.respond(500)
        config.write_text(config_text(hook, admin, crm.url, router="retry = { max_attempts = 1 }"))
        with RouterProcess(config, env=ENV) as router:
            send(hook)
            router.wait_log("delivery dead-lettered")
            assert len(crm.requests) == 1
            send(hook, "transport.relationshipChanged")  # no route: said at debug, below the level
            config.write_text(
                config_text(
                    hook,
                    admin,
                    crm.url,
                    router='log_level = "debug"\nretry = { max_attempts = 3, initial_backoff = "10ms", '
                    'max_backoff = "20ms" }',
                )
            )
            mine = run_cli("reload", "-c", str(config), env=ENV)
            assert mine.returncode == 0 and mine.stdout.strip() == "reloaded", mine.stderr
            reloaded = router.wait_log("configuration reloaded")
            assert reloaded["restarted"] == [] and reloaded["warnings"] == [], reloaded
            send(hook)
            router.wait_log("delivery dead-lettered", count=2)
            assert len(crm.requests) == 1 + 3
            send(hook, "transport.relationshipChanged")
            unmatched = router.wait_log("no route matched")
            assert unmatched["level"] == "debug"
            assert len([r for r in router.log_records() if r.get("msg") == "no route matched"]) == 1
            assert router.terminate() == 0


def test_reload_of_a_file_the_router_would_refuse_is_not_sent(tmp_path: Path) -> None:
    """`reload -c` reads the whole file first: an invalid one is not sent (the router logs nothing), and
    the command says so."""
    hook, admin = free_port(), free_port()
    config = tmp_path / "router.toml"
    config.write_text(config_text(hook, admin))
    with RouterProcess(config, env=ENV) as router:
        config.write_text(config_text(hook, admin).replace('type = "http"', 'type = "htp"'))
        refused = run_cli("reload", "-c", str(config), env=ENV)
        assert refused.returncode == 1
        lines = refused.stderr.splitlines()
        assert lines[0].startswith("error: router.toml: outputs.crm.type: unknown output type 'htp'"), lines
        assert lines[-1] == "reload not sent: the running router keeps its configuration", lines
        assert not [r for r in router.log_records() if str(r.get("msg")).startswith(("reload", "configuration"))]
        assert router.terminate() == 0


def test_a_router_started_with_a_missing_file_names_it_without_an_empty_key(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = run_cli("run", "-c", str(missing), "--log-format", "json")
    assert result.returncode == 1
    error = f"missing.toml: cannot read {str(missing)!r}: No such file or directory"
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [f"error: {error}"]
    records = [orjson.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    [failed] = [r for r in records if r["msg"] == "router failed to start"]
    assert failed["error"] == error and "key" not in failed, failed
