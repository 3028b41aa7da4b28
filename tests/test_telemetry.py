"""`[router.telemetry]`: spans of each event's path, exported over OTLP/HTTP (event_router.core.telemetry).

There is no OpenTelemetry Collector binary on this machine: the collector here is a real HTTP server on loopback
(the test kit's `http_receiver`) that takes the exporter's POSTs to /v1/traces and decodes each body as the
`ExportTraceServiceRequest` protobuf the OTLP/HTTP protocol sends (with the `opentelemetry-proto` package the
exporter itself depends on), answering with an `ExportTraceServiceResponse`. Routers are real subprocesses
(and, for the Connector output, an in-process app against the fake Connector), the http output's receiver
the test kit's real HTTP server. OTEL_BSP_SCHEDULE_DELAY is short so that spans arrive within the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from event_router.testing import (
    MakeApp,
    Recorded,
    RouterProcess,
    example,
    free_port,
    http_receiver,
    post,
    read_jsonl,
    router_table,
    run_cli,
    send_webhook,
    until,
    wait_for,
    webhook_input,
)
from fake_connector import FakeConnector
from router_helpers import http_output, route

#: the exporter's batches every 50 ms, not the SDK's default 5 s
ENV = {"ROUTER_WEBHOOK_API_KEY": "otel-key", "OTEL_BSP_SCHEDULE_DELAY": "50", "OTLP_TOKEN": "otlp-s3cret"}
HEADERS = {"x-api-key": "otel-key"}
#: the incoming context: a trace the Connector's caller started (W3C Trace Context, sampled)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
CORRELATION = "7c0c1a52-4f9a-4a43-9d0e-1f2a3b4c5d6e"
OUTCOME = "event_router.delivery.outcome"
#: the http output's retries: every 50 to 100 ms
RETRY = 'retry = { initial_backoff = "50ms", max_backoff = "100ms", max_attempts = 100 }'


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]
    status: int
    status_message: str
    resource: dict[str, Any]
    start: int
    end: int


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@dataclass
class Collector:
    """What the OTLP/HTTP receiver got: the decoded spans, and the export requests' headers."""

    spans: list[Span] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def take(self, request: Recorded, handler: BaseHTTPRequestHandler) -> None:
        decoded = ExportTraceServiceRequest.FromString(request.body)
        spans = []
        for resource_spans in decoded.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        Span(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            status=span.status.code,
                            status_message=span.status.message,
                            resource=resource,
                            start=span.start_time_unix_nano,
                            end=span.end_time_unix_nano,
                        )
                    )
        with self.lock:
            self.spans.extend(spans)
            self.headers.append({k.lower(): v for k, v in request.headers.items()})
        answer = ExportTraceServiceResponse().SerializeToString()
        handler.send_response(200 if request.path == "/v1/traces" else 404)
        handler.send_header("Content-Type", "application/x-protobuf")
        handler.send_header("Content-Length", str(len(answer)))
        handler.end_headers()
        handler.wfile.write(answer)

    def named(self, prefix: str, trace_id: str | None = None) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.name.startswith(prefix) and (trace_id is None or s.trace_id == trace_id)]

    def wait(self, prefix: str, count: int = 1, trace_id: str | None = None) -> list[Span]:
        found: list[Span] = wait_for(
            lambda: spans if len(spans := self.named(prefix, trace_id)) >= count else None,
            what=f"{count} span(s) {prefix!r}",
        )
        return sorted(found, key=lambda s: s.start)


@contextmanager
def otlp_collector() -> Iterator[Collector]:
    collector = Collector()
    with http_receiver(collector.take) as server:
        collector.url = server.url
        yield collector


def write_config(tmp: Path, port: int, target: str, *, telemetry: str | None) -> Path:
    path = tmp / "router.toml"
    path.write_text(
        router_table(shutdown_timeout="5s", extra=telemetry or "")
        + webhook_input(port)
        + http_output("crm", f"{target}/hooks/{{{{trigger}}}}", f'timeout = "5s"\n{RETRY}')
        + route('"crm"', name="mail to crm")
    )
    return path


def telemetry_table(collector: Collector) -> str:
    return (
        "[router.telemetry]\n"
        f'endpoint = "{collector.url}"\n'
        'service_name = "router-under-test"\n'
        'headers = { Authorization = { env = "OTLP_TOKEN" }, X-Tenant = "acme" }\n'
    )


def traceparent_of(request: Recorded) -> tuple[str, str, str]:
    """(trace id, parent id, flags) of the `traceparent` header a receiver got."""
    version, trace_id, parent_id, flags = request.headers["traceparent"].split("-")
    assert version == "00"
    return trace_id, parent_id, flags


@pytest.mark.slow
def test_spans_of_a_webhook_event_and_its_attempts_join_the_incoming_trace(tmp_path: Path) -> None:
    """The webhook's `traceparent` is the receive span's parent; route and store are its children; each attempt
    (a 503, then a 2xx) is a span of its own under the stored context, and the receiver gets a `traceparent`
    whose parent is that attempt's span. The export carries the configured headers; the log lines about the
    event carry its trace id."""
    port = free_port()
    with otlp_collector() as collector, http_receiver() as crm:
        crm.respond(503, 200)
        config = write_config(tmp_path, port, crm.url, telemetry=telemetry_table(collector))
        with RouterProcess(config, env=ENV) as router:
            status, body, _ = post(
                f"http://127.0.0.1:{port}/events",
                example("transport.messageReceived"),
                {**HEADERS, "traceparent": TRACEPARENT, "x-correlation-id": CORRELATION},
            )
            assert status == 202, body
            event_id = body["id"]
            wait_for(lambda: len(crm.requests) == 2, what="two attempts")
            attempts = collector.wait("deliver crm", 2, TRACE_ID)
            (receive,) = collector.wait("receive connector", 1, TRACE_ID)
            (route,) = collector.wait("route", 1, TRACE_ID)
            (store,) = collector.wait("store", 1, TRACE_ID)
            retried = router.wait_log("delivery failed, will retry")
        logs = router.log_records()

    # the receive span continues the caller's trace, with the event's attributes
    assert receive.parent_id == PARENT_ID
    assert receive.attributes["event_router.event.id"] == event_id
    assert receive.attributes["event_router.event.trigger"] == "transport.messageReceived"
    assert receive.attributes["event_router.input"] == "connector"
    assert receive.attributes["enmeshed.correlation_id"] == CORRELATION
    assert receive.attributes["event_router.event.status"] == "accepted"
    assert receive.resource["service.name"] == "router-under-test"
    assert route.parent_id == receive.span_id and store.parent_id == receive.span_id
    assert route.attributes["event_router.routes"] == ["mail to crm"]
    assert receive.start <= route.start <= route.end <= store.start <= store.end <= receive.end
    # one span per attempt, children of the stored receive context
    first, second = attempts
    assert {first.parent_id, second.parent_id} == {receive.span_id}
    assert [a.attributes["event_router.delivery.attempt"] for a in attempts] == [1, 2]
    assert [a.attributes["event_router.delivery.outcome"] for a in attempts] == ["retry", "delivered"]
    assert first.attributes["http.response.status_code"] == 503 and first.status == 2  # STATUS_CODE_ERROR
    assert "503" in first.attributes["event_router.error"]
    assert second.status != 2 and "event_router.error" not in second.attributes
    for span in attempts:
        assert span.attributes["event_router.output"] == "crm"
        assert span.attributes["event_router.route"] == "mail to crm"
        assert span.attributes["event_router.event.id"] == event_id
        assert span.attributes["enmeshed.correlation_id"] == CORRELATION
        assert span.kind == 3  # SPAN_KIND_CLIENT
    # the receiver got each attempt's own context
    assert [traceparent_of(r) for r in crm.requests] == [(TRACE_ID, a.span_id, "01") for a in attempts]
    # the stored event carries the receive span's context, and the incoming header as it came
    delivered = crm.requests[1].json()
    assert delivered["meta"]["traceparent"] == f"00-{TRACE_ID}-{receive.span_id}-01"
    assert delivered["meta"]["headers"]["traceparent"] == TRACEPARENT
    # the exporter sent the configured headers, the secret resolved from its reference
    assert collector.headers and all(h.get("authorization") == "otlp-s3cret" for h in collector.headers)
    assert all(h.get("x-tenant") == "acme" for h in collector.headers)
    # log lines about the delivery carry the trace id; the secret never shows
    assert retried["trace_id"] == TRACE_ID and retried["event_id"] == event_id
    assert "otlp-s3cret" not in router.logs()
    assert all(r.get("trace_id") in (None, TRACE_ID) for r in logs)


@pytest.mark.slow
def test_a_delivery_after_a_restart_joins_the_trace_the_event_was_stored_with(
    tmp_path: Path, router_spool: tuple[str, dict[str, str]]
) -> None:
    """The receive span's context is stored with the event (on either spool backend): a router started again
    makes the delivery's span a child of the first router's receive span, and sends that context on."""
    spool, spool_env = router_spool
    port = free_port()
    env = {**ENV, **spool_env}
    with otlp_collector() as collector, http_receiver() as crm:
        crm.respond(503)
        config = write_config(tmp_path, port, crm.url, telemetry=f"{spool}\n{telemetry_table(collector)}")
        with RouterProcess(config, env=env):
            status, body, _ = post(
                f"http://127.0.0.1:{port}/events",
                example("transport.messageReceived"),
                {**HEADERS, "traceparent": TRACEPARENT},
            )
            assert status == 202, body
            (receive,) = collector.wait("receive connector", 1, TRACE_ID)
            wait_for(lambda: crm.requests, what="a first attempt")
        crm.respond(200)
        with RouterProcess(config, env=env):
            delivered = wait_for(
                lambda: [s for s in collector.named("deliver crm", TRACE_ID) if s.attributes[OUTCOME] == "delivered"],
                what="the delivery's span after the restart",
            )[0]
    assert delivered.parent_id == receive.span_id
    assert delivered.attributes["event_router.delivery.attempt"] == len(crm.requests) > 1
    assert traceparent_of(crm.requests[-1])[:2] == (TRACE_ID, delivered.span_id)
    # the first router made no other receive span for it
    assert len(collector.named("receive", TRACE_ID)) == 1


@pytest.mark.slow
def test_telemetry_off_sends_no_traceparent_and_exports_nothing(tmp_path: Path) -> None:
    """Without `[router.telemetry]` nothing is traced, even with the standard OTEL_* variables pointing at a
    collector: no `traceparent` goes out, no span is exported, no log line has a trace id. The incoming
    header is still kept with the event (`meta.headers`), for a router that turns telemetry on later."""
    port = free_port()
    with otlp_collector() as collector, http_receiver() as crm:
        config = write_config(tmp_path, port, crm.url, telemetry=None)
        env = {**ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_TRACES_EXPORTER": "otlp"}
        with RouterProcess(config, env=env) as router:
            status, body, _ = post(
                f"http://127.0.0.1:{port}/events",
                example("transport.messageReceived"),
                {**HEADERS, "traceparent": TRACEPARENT},
            )
            assert status == 202, body
            wait_for(lambda: crm.requests, what="the delivery")
        logs = router.log_records()
    (request,) = crm.requests
    assert "traceparent" not in {k.lower() for k in request.headers}
    meta = request.json()["meta"]
    assert "traceparent" not in meta and meta["headers"]["traceparent"] == TRACEPARENT
    assert collector.spans == [] and collector.headers == []
    assert not [r for r in logs if "trace_id" in r]


@pytest.mark.anyio
async def test_the_connector_output_sends_the_attempts_context_and_its_result_event_continues_the_trace(
    make_app: MakeApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connector output sends each call's attempt context as `traceparent`; the result event it emits
    (`emit_results`) is received as a child of that attempt, in the same trace."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    port = free_port()
    with otlp_collector() as collector:
        async with FakeConnector(api_key="connector-key") as fake:
            text = f"""
[router]
data_dir = "{tmp_path}/var"
[router.telemetry]
endpoint = "{collector.url}"
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:{port}"
[outputs.connector]
type = "connector"
base_url = "{fake.url}"
api_key = "connector-key"
emit_results = true
[outputs.results]
type = "file"
path = "{tmp_path}/results.jsonl"
[[routes]]
name = "sync on mail"
match = {{ trigger = ["transport.messageReceived"] }}
to = "connector"
action = {{ name = "sync" }}
[[routes]]
name = "results"
match = {{ trigger = ["router.**"] }}
to = "results"
"""
            async with make_app(text):
                await send_webhook(port, example("transport.messageReceived"), {"traceparent": TRACEPARENT})
                await until(lambda: read_jsonl(tmp_path / "results.jsonl"), "the result event")
            (call,) = fake.calls("sync")
        (attempt,) = collector.wait("deliver connector", 1, TRACE_ID)
        (result,) = collector.wait("receive router", 1, TRACE_ID)
    assert call.headers["traceparent"] == f"00-{TRACE_ID}-{attempt.span_id}-01"
    assert call.headers["x-correlation-id"] == attempt.attributes["event_router.event.id"]
    assert result.parent_id == attempt.span_id
    assert result.attributes["event_router.event.trigger"] == "router.actionSucceeded"
    (succeeded,) = read_jsonl(tmp_path / "results.jsonl")
    assert succeeded["meta"]["traceparent"] == f"00-{TRACE_ID}-{result.span_id}-01"


def test_check_shows_telemetry_without_its_secrets(tmp_path: Path) -> None:
    """`check` names where spans go and the header names, never a header's value; `--json` the same."""
    with otlp_collector() as collector:
        config = write_config(tmp_path, free_port(), "http://127.0.0.1:9", telemetry=telemetry_table(collector))
    checked = run_cli("check", "-c", str(config), env=ENV)
    assert checked.returncode == 0, checked.stderr
    assert (
        f"telemetry: traces over OTLP/HTTP to {collector.url}/v1/traces, service 'router-under-test', "
        "sample_ratio 1, headers Authorization, X-Tenant\n"
    ) in checked.stdout
    assert "otlp-s3cret" not in checked.stdout + checked.stderr
    as_json = run_cli("check", "-c", str(config), "--json", env=ENV)
    assert json.loads(as_json.stdout)["telemetry"] == {
        "endpoint": f"{collector.url}/v1/traces",
        "service_name": "router-under-test",
        "sample_ratio": 1.0,
        "headers": ["Authorization", "X-Tenant"],
    }
    assert "otlp-s3cret" not in as_json.stdout
    # the endpoint from the standard variable when the table names none
    config.write_text(config.read_text().replace(f'endpoint = "{collector.url}"\n', ""))
    checked = run_cli(
        "check", "-c", str(config), env={**ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel.example:4318/"}
    )
    assert checked.returncode == 0, checked.stderr
    assert "telemetry: traces over OTLP/HTTP to http://otel.example:4318/v1/traces" in checked.stdout


def test_a_router_without_the_otel_extra_names_it(tmp_path: Path) -> None:
    """The `otel` extra missing: a config with `[router.telemetry]` is refused at that key, saying what to
    install (the OpenTelemetry packages hidden from the import system in a subprocess). The same config
    without the table loads there."""
    config = write_config(
        tmp_path, free_port(), "http://127.0.0.1:9", telemetry='[router.telemetry]\nendpoint = "http://127.0.0.1:4318"'
    )
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from event_router.ops.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )

    def check(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code, "check", "-c", str(path)],
            env={**os.environ, **ENV},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    refused = check(config)
    assert refused.returncode == 1
    assert (
        "router.toml: router.telemetry: telemetry needs the OpenTelemetry SDK and its OTLP exporter: install "
        "enmeshed-event-router[otel]"
    ) in refused.stderr
    plain = tmp_path / "plain.toml"
    plain.write_text(config.read_text().replace('[router.telemetry]\nendpoint = "http://127.0.0.1:4318"', ""))
    accepted = check(plain)
    assert accepted.returncode == 0, accepted.stderr


def inprocess_toml(collector: Collector, port: int, target: str, *, router: str = "", telemetry: str = "") -> str:
    """A router for `make_app`: a webhook without a key, an http output retried every 50 ms."""
    return (
        router_table(extra=router)
        + f'[router.telemetry]\nendpoint = "{collector.url}"\n{telemetry}\n'
        + webhook_input(port, api_key=None)
        + http_output("crm", f"{target}/hooks", RETRY)
        + route('"crm"')
    )


@pytest.mark.anyio
async def test_sample_ratio_decides_for_new_traces_only(
    make_app: MakeApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sample_ratio = 0`: an event without a context is traced by none of its spans, yet its context goes
    out, flagged unsampled; an event whose `traceparent` is sampled is traced all the same (parent-based)."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    port = free_port()
    with otlp_collector() as collector, http_receiver() as crm:
        async with make_app(inprocess_toml(collector, port, crm.url, telemetry="sample_ratio = 0")):
            await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: len(crm.requests) == 1, "the unsampled event's delivery")
            await send_webhook(port, example("transport.messageReceived"), {"traceparent": TRACEPARENT})
            await until(lambda: len(crm.requests) == 2, "the sampled event's delivery")
            await until(lambda: collector.named("deliver crm"), "the sampled attempt's span")
        unsampled_trace, _, unsampled_flags = traceparent_of(crm.requests[0])
        sampled_trace, _, sampled_flags = traceparent_of(crm.requests[1])
    # the sampled bit (W3C Trace Context level 2 adds a "random trace id" bit the SDK may set beside it)
    assert int(unsampled_flags, 16) & 1 == 0
    assert (sampled_trace, sampled_flags) == (TRACE_ID, "01")
    assert {s.trace_id for s in collector.spans} == {TRACE_ID}
    assert sorted(s.name for s in collector.spans) == ["deliver crm", "receive connector", "route", "store"]
    assert unsampled_trace != TRACE_ID


@pytest.mark.anyio
async def test_an_event_the_spool_refuses_ends_its_receive_span_as_an_error(
    make_app: MakeApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At `max_pending_events` the webhook answers 503: that event's receive span ends with the error (no
    store span, as nothing was stored), and the next event is traced as usual."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    port = free_port()
    refused_parent = f"00-{'1' * 32}-{PARENT_ID}-01"
    with otlp_collector() as collector:
        # nothing listens at the output: the first event stays pending
        text = inprocess_toml(collector, port, f"http://127.0.0.1:{free_port()}", router="max_pending_events = 1")
        async with make_app(text):
            await send_webhook(port, example("transport.messageReceived"), {"traceparent": TRACEPARENT})
            status, body, _ = await anyio.to_thread.run_sync(
                lambda: post(
                    f"http://127.0.0.1:{port}/events",
                    example("transport.messageReceived"),
                    {"traceparent": refused_parent},
                )
            )
            assert status == 503, body
            (refused,) = await anyio.to_thread.run_sync(lambda: collector.wait("receive connector", 1, "1" * 32))
    assert refused.status == 2 and refused.status_message.startswith("SpoolFull")
    assert refused.parent_id == PARENT_ID
    assert collector.named("store", "1" * 32) == []
    assert [s.name for s in collector.named("store", TRACE_ID)] == ["store"]


@pytest.mark.anyio
async def test_a_reload_keeps_the_running_telemetry_and_says_so(
    make_app: MakeApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    port = free_port()
    with otlp_collector() as collector, http_receiver() as crm:
        text = inprocess_toml(collector, port, crm.url, telemetry='service_name = "first"')
        async with make_app(text) as app:
            (tmp_path / "router.toml").write_text(text.replace('service_name = "first"', 'service_name = "second"'))
            reloaded = await app.reload()
            assert reloaded.applied and reloaded.warnings == [
                "router.telemetry changed: it takes effect at the next restart"
            ]
            await send_webhook(port, example("transport.messageReceived"), {"traceparent": TRACEPARENT})
            await until(lambda: crm.requests, "the delivery")
            await until(lambda: collector.named("deliver crm"), "the attempt's span")
    assert {s.resource["service.name"] for s in collector.spans} == {"first"}


@pytest.mark.anyio
async def test_otel_sdk_disabled_turns_it_off(
    make_app: MakeApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The SDK's standard OTEL_SDK_DISABLED=true: nothing is traced, and no all-zero `traceparent` (what the
    disabled SDK's spans would carry) goes out."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    port = free_port()
    with otlp_collector() as collector, http_receiver() as crm:
        async with make_app(inprocess_toml(collector, port, crm.url)) as app:
            await send_webhook(port, example("transport.messageReceived"), {"traceparent": TRACEPARENT})
            await until(lambda: crm.requests, "the delivery")
            assert app.pipeline.telemetry is None
    assert "traceparent" not in {k.lower() for k in crm.requests[0].headers}
    assert "traceparent" not in crm.requests[0].json()["meta"]
    assert "OTEL_SDK_DISABLED=true: nothing is traced" in caplog.text
    assert collector.headers == []
