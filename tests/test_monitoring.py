"""packaging/'s Prometheus alert rules and Grafana dashboard: checked and unit-tested with the real
`promtool` (Debian's `prometheus` package; scripts/services installs it in CI), and every metric they name
found on a real router's `/metrics` (a router with a webhook, gap recovery against the fake Connector, a
file output and an http output whose receiver is down), so a renamed metric breaks this test and not an
operator's alert.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML: a dev dependency

from event_router.testing import (
    RouterProcess,
    example,
    free_port,
    post,
    require_program,
    router_table,
    until,
    webhook_input,
)
from fake_connector import FakeConnector

PACKAGING = Path(__file__).resolve().parent.parent / "packaging"
RULES = PACKAGING / "prometheus" / "event-router.rules.yml"
RULE_TESTS = PACKAGING / "prometheus" / "event-router.rules.test.yml"
DASHBOARD = PACKAGING / "grafana" / "event-router.json"
KEY = "hook-key"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _promtool() -> str:
    return require_program("promtool", "/usr/bin/promtool")


def test_promtool_checks_the_alert_rules() -> None:
    done = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout, done.stdout


def test_every_alert_fires_in_promtools_unit_tests() -> None:
    done = subprocess.run(
        [_promtool(), "test", "rules", RULE_TESTS.name],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=RULE_TESTS.parent,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rules = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    tested = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing = {case["alertname"] for test in tested for case in test["alert_rule_test"] if case.get("exp_alerts")}
    # each alert has a case where it fires (an empty expectation alone would pass for a rule that never does)
    assert rules - firing == set(), f"alerts no unit test sees firing: {sorted(rules - firing)}"


def _named_metrics() -> dict[str, set[str]]:
    """The router's metric names (`event_router_*`) each file's expressions use, by file."""
    names: dict[str, set[str]] = {}
    exprs = [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    names[RULES.name] = {n for e in exprs for n in re.findall(r"\bevent_router_[a-z_]+", e)}
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [dashboard["templating"]["list"][0]["definition"]]
    names[DASHBOARD.name] = {n for q in queries for n in re.findall(r"\bevent_router_[a-z_]+", q)}
    return names


def _exposed(admin: int) -> set[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as response:
        text = response.read().decode()
    # sample names only: a metric the router declares but never sets is not proof an alert could see it
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def _config(hook: int, admin: int, connector: str, down: int) -> str:
    """A webhook, gap recovery, a file output and an http output whose receiver is down."""
    return (
        router_table(admin)
        + webhook_input(hook, api_key=f'"{KEY}"', extra='validation = "strict"')
        + f'[inputs.recovery]\ntype = "connector"\nbase_url = "{connector}"\napi_key = "connector-key"\n'
        + 'interval = "1s"\nsettle = "1s"\ncovers = "connector"\n'
        + '[outputs.archive]\ntype = "file"\npath = "./var/events.jsonl"\n'
        + f'[outputs.crm]\ntype = "http"\nurl = "http://127.0.0.1:{down}/hook"\n'
        + 'retry = { initial_backoff = "30s" }\n'
        + '[[routes]]\nname = "all"\nmatch.source = ["connector"]\nto = ["archive", "crm"]\n'
    )


@pytest.mark.anyio
async def test_every_metric_the_rules_and_dashboard_name_is_on_a_real_routers_metrics(tmp_path: Path) -> None:
    hook, admin = free_port(), free_port()
    async with FakeConnector() as fake:
        (tmp_path / "router.toml").write_text(_config(hook, admin, fake.url, free_port()))
        router = RouterProcess(tmp_path / "router.toml").start()
        try:
            # raised while no webhook reaches the router: gap recovery rebuilds it
            await fake.receive_message()
            await _exercise(hook, admin)
        finally:
            router.terminate()


async def _exercise(hook: int, admin: int) -> None:
    """Refuse a request, dead-letter an invalid event and an unknown trigger, deliver one event to the file
    (the http output's delivery stays pending), then wait for every named metric to show (the recovered
    event's among them)."""
    url = f"http://127.0.0.1:{hook}/events"
    status, _, _ = post(url, example("transport.messageReceived"), {"x-api-key": "wrong"})
    assert status == 401
    status, _, _ = post(url, example("transport.messageReceived"), {"x-api-key": KEY})
    assert status == 202
    invalid = {"trigger": "transport.messageReceived", "data": {"id": 1}}
    assert post(url, invalid, {"x-api-key": KEY})[0] in (202, 400, 422)
    assert post(url, {"trigger": "no.suchTrigger", "data": {}}, {"x-api-key": KEY})[0] in (202, 400, 422)
    wanted = set().union(*_named_metrics().values())

    def seen() -> set[str] | None:
        exposed = _exposed(admin)
        # a histogram is named by its series; a counter's series end in _total
        present = {n for n in wanted if n in exposed or f"{n}_total" in exposed}
        return exposed if present == wanted else None

    try:
        await until(seen, "every metric the rules and the dashboard name", within=30)
    except AssertionError:
        exposed = _exposed(admin)
        missing = sorted(n for n in wanted if n not in exposed and f"{n}_total" not in exposed)
        pytest.fail(f"named in packaging/ but not on /metrics: {missing}\nexposed: {sorted(exposed)}")
