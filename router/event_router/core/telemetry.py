"""Traces of each event's path through the router, exported over OTLP/HTTP: `[router.telemetry]`.

Imported only when the config has `[router.telemetry]` (the config loader imports it to say, at load, when
the `otel` extra is missing): it needs the OpenTelemetry SDK and its OTLP/HTTP exporter. With telemetry off
nothing here runs; the pipeline and the delivery workers hold `telemetry = None` and test that once per
batch. Every OpenTelemetry call of the router is in this module; the pipeline and the workers call it at
their hook points.

One trace per event, whose spans are:
- `receive <input>` (kind CONSUMER), from the pipeline's `submit` until the event's outcome is settled. Its
  parent is the context the event came with: `meta.traceparent` (an output's result event: the attempt that
  made it), else the W3C `traceparent`/`tracestate` an input kept in `meta.headers` (the webhook does), else
  none (a new trace, sampled at `sample_ratio`). Before the event is stored, its own context is written to
  `meta.traceparent` (and `meta.tracestate`), so what happens to it later, after a restart too, joins it.
  - `route`: validation, matching and reshaping;
  - `store`: the spool's commit that stores it (with the rest of its batch).
- `deliver <output>` (kind CLIENT), one per delivery attempt, retries included, child of the stored context.
  The output sends the attempt's own context on (`Delivery.traceparent`: the http and connector outputs'
  `traceparent` header), so the receiver's spans are children of the attempt that reached them.

Spans carry ids, names and outcomes, never event data (which holds personal data).

Spans are exported in batches from the SDK's thread (BatchSpanProcessor, tuned by the standard OTEL_BSP_*
variables); the event loop only makes them. Log lines about an event or a delivery carry its `trace_id`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from event_router import __version__
from event_router.api.errors import DeliveryError
from event_router.api.event import Event
from event_router.api.plugin import Delivery, SubmitResult
from event_router.core.model import TelemetrySettings
from event_router.core.plan import Plan

log = logging.getLogger("event_router.core.telemetry")

#: the SDK's endpoint when neither the config nor the standard variables name one
DEFAULT_ENDPOINT = "http://localhost:4318"
TRACES_PATH = "/v1/traces"

# the spans' attributes
EVENT_ID = "event_router.event.id"
TRIGGER = "event_router.event.trigger"
INPUT = "event_router.input"
#: the Connector's `x-correlation-id` header (a webhook kept it in `meta.headers`): what links the event to
#: the REST call that caused it
CORRELATION_ID = "enmeshed.correlation_id"
STATUS = "event_router.event.status"
ROUTES = "event_router.routes"
DELIVERIES = "event_router.deliveries"
DEAD_LETTER_REASON = "event_router.dead_letter.reason"
DEAD_LETTER_ID = "event_router.dead_letter.id"
OUTPUT = "event_router.output"
ROUTE = "event_router.route"
DELIVERY_ID = "event_router.delivery.id"
ATTEMPT = "event_router.delivery.attempt"
OUTCOME = "event_router.delivery.outcome"
RETRY_IN = "event_router.delivery.retry_in"
ERROR = "event_router.error"
ERROR_CODE = "event_router.error.code"
HTTP_STATUS = "http.response.status_code"

_PROPAGATOR = TraceContextTextMapPropagator()


def traces_endpoint(settings: TelemetrySettings) -> str:
    """The URL spans are posted to: `endpoint` (a base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is) plus
    /v1/traces, else what the standard variables say, as the exporter reads them."""
    if settings.endpoint is not None:
        base = settings.endpoint.rstrip("/")
        return base if base.endswith(TRACES_PATH) else base + TRACES_PATH
    if signal := os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return signal
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or DEFAULT_ENDPOINT
    return base.rstrip("/") + TRACES_PATH


def _parent(meta: Mapping[str, Any]) -> Context | None:
    """The context an event came with: the router's own (`meta.traceparent`: its receive span's, written before
    it was stored; or, for an output's result event, the attempt's that made it), else the W3C headers its
    input kept (`meta.headers`); None when there is none. A malformed `traceparent` is ignored, as W3C Trace
    Context says: the event starts a trace of its own."""
    carrier: Any = meta if "traceparent" in meta else meta.get("headers")
    if not isinstance(carrier, Mapping):
        return None
    parent = carrier.get("traceparent")
    if not isinstance(parent, str):
        return None
    headers = {"traceparent": parent}
    state = carrier.get("tracestate")
    if isinstance(state, str):
        headers["tracestate"] = state
    return _PROPAGATOR.extract(headers)


def _traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def _correlation(meta: Mapping[str, Any]) -> str | None:
    headers = meta.get("headers")
    value = headers.get("x-correlation-id") if isinstance(headers, Mapping) else None
    return value if isinstance(value, str) else None


def _failed(span: Span, exc: BaseException) -> None:
    if isinstance(exc, Exception):
        span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__))


class EventTrace:
    """One event's receive span while the pipeline handles it (`Plan.trace`)."""

    __slots__ = ("context", "span", "store", "trace_id")

    def __init__(self, span: Span, trace_id: str) -> None:
        self.span = span
        #: the context the event's child spans start in
        self.context = set_span_in_context(span)
        #: for log lines (`trace_id`)
        self.trace_id = trace_id
        #: the store span while the spool commits
        self.store: Span | None = None


class AttemptTrace:
    """One delivery attempt's span, from the attempt's start until its outcome is recorded."""

    __slots__ = ("span", "trace_id")

    def __init__(self, span: Span, trace_id: str) -> None:
        self.span = span
        self.trace_id = trace_id

    def end(self, record: Mapping[str, Any], outcome: BaseException | None, end_ns: int) -> None:
        """The attempt's outcome as the worker recorded it (the tap's record of it), ended when the output
        answered (`end_ns`), not when the outcome was committed."""
        span = self.span
        span.set_attribute(OUTCOME, record["outcome"])
        span.set_attribute(ATTEMPT, record["attempt"])
        if "retry_in" in record:
            span.set_attribute(RETRY_IN, record["retry_in"])
        if record.get("dead_letter") is not None:
            span.set_attribute(DEAD_LETTER_ID, record["dead_letter"])
        if outcome is not None:
            message = str(record.get("error", ""))
            span.set_attribute(ERROR, message)
            code = outcome.code if isinstance(outcome, DeliveryError) else None
            if code:
                span.set_attribute(ERROR_CODE, code)
                if len(code) == 3 and code.isdigit():  # an HTTP status (the http output's, the Connector's)
                    span.set_attribute(HTTP_STATUS, int(code))
            span.set_status(Status(StatusCode.ERROR, message))
        span.end(end_time=end_ns)


def start_telemetry(settings: TelemetrySettings) -> Telemetry | None:
    """The router's tracer; None when the standard OTEL_SDK_DISABLED=true turns the SDK off: its tracer would
    make spans without ids, whose all-zero `traceparent` no output may send."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        log.warning("[router.telemetry] is configured, but OTEL_SDK_DISABLED=true: nothing is traced")
        return None
    return Telemetry(settings)


class Telemetry:
    """The router's tracer, from `[router.telemetry]`: made when the router starts, shut down (its last spans
    exported) when it stops."""

    def __init__(self, settings: TelemetrySettings, *, exporter: SpanExporter | None = None) -> None:
        self.settings = settings
        resource = Resource.create({"service.name": settings.service_name, "service.version": __version__})
        # the ratio decides for traces that start here; an event that came with a context follows its sampled flag
        sampler = ParentBased(TraceIdRatioBased(settings.sample_ratio))
        # shut down by the app (`shutdown`), which runs it off the event loop: the last export may take a while
        self.provider = TracerProvider(resource=resource, sampler=sampler, shutdown_on_exit=False)
        if exporter is None:
            exporter = OTLPSpanExporter(endpoint=traces_endpoint(settings), headers=dict(settings.headers) or None)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("event_router", __version__)

    def shutdown(self) -> None:
        """Export what is left and stop the exporter's thread. Blocks: call it off the event loop."""
        self.provider.shutdown()

    # --- the pipeline --------------------------------------------------------------------------------

    def received(self, input_name: str, events: Sequence[Event]) -> list[EventTrace]:
        """Start each event's receive span and write its context into the event's meta, before it is stored."""
        traces: list[EventTrace] = []
        name = f"receive {input_name}"
        for event in events:
            meta = event.meta
            attributes: dict[str, Any] = {EVENT_ID: event.id, TRIGGER: event.trigger, INPUT: input_name}
            correlation = _correlation(meta)
            if correlation is not None:
                attributes[CORRELATION_ID] = correlation
            span = self.tracer.start_span(name, context=_parent(meta), kind=SpanKind.CONSUMER, attributes=attributes)
            context = span.get_span_context()
            meta["traceparent"] = _traceparent(context)
            state = context.trace_state.to_header()
            if state:
                meta["tracestate"] = state
            else:
                meta.pop("tracestate", None)  # an earlier context's (a replayed event): not this one's
            traces.append(EventTrace(span, f"{context.trace_id:032x}"))
        return traces

    def route(self, traces: Sequence[EventTrace], events: Sequence[Event], plan: Callable[[Event], Plan]) -> list[Plan]:
        """`plan` each event in a route span of its own; each plan keeps its event's trace."""
        plans: list[Plan] = []
        for event_trace, event in zip(traces, events, strict=True):
            span = self.tracer.start_span("route", context=event_trace.context)
            try:
                planned = plan(event)
            except BaseException as exc:
                _failed(span, exc)
                span.end()
                raise
            planned.trace = event_trace
            span.set_attribute(ROUTES, [route.name for route in planned.routes])
            span.set_attribute(DELIVERIES, len(planned.deliveries))
            if planned.dead_letter is not None:
                span.set_attribute(DEAD_LETTER_REASON, planned.dead_letter[0])
            span.end()
            plans.append(planned)
        return plans

    def storing(self, plans: Sequence[Plan]) -> None:
        """The spool is about to commit these plans' events: a store span each, all started now."""
        now = time.time_ns()
        for plan in plans:
            event_trace: EventTrace = plan.trace
            event_trace.store = self.tracer.start_span("store", context=event_trace.context, start_time=now)

    def stored(self, plans: Sequence[Plan]) -> None:
        now = time.time_ns()
        for plan in plans:
            event_trace: EventTrace = plan.trace
            if event_trace.store is not None:
                event_trace.store.end(end_time=now)
                event_trace.store = None

    def settled(self, plans: Sequence[Plan], results: Sequence[SubmitResult]) -> None:
        """End each receive span with what became of its event."""
        for plan, result in zip(plans, results, strict=True):
            span = plan.trace.span
            span.set_attribute(STATUS, result.status)
            if result.dead_letter_id is not None and plan.dead_letter is not None:
                span.set_attribute(DEAD_LETTER_ID, result.dead_letter_id)
                span.set_attribute(DEAD_LETTER_REASON, plan.dead_letter[0])
                span.set_status(Status(StatusCode.ERROR, plan.dead_letter[1]))
            span.end()

    def failed(self, traces: Sequence[EventTrace], exc: BaseException) -> None:
        """`submit` failed (the spool full, or unable to write): the events were not stored."""
        for event_trace in traces:
            if event_trace.store is not None:
                _failed(event_trace.store, exc)
                event_trace.store.end()
                event_trace.store = None
            _failed(event_trace.span, exc)
            event_trace.span.end()

    # --- the delivery workers ------------------------------------------------------------------------

    def attempt(self, output: str, delivery: Delivery) -> AttemptTrace:
        """Start the span of an attempt at `delivery`, and give the delivery its context to send on."""
        event = delivery.event
        meta = event.meta
        attributes: dict[str, Any] = {
            OUTPUT: output,
            ROUTE: delivery.route,
            DELIVERY_ID: delivery.id,
            ATTEMPT: delivery.attempt,
            EVENT_ID: event.id,
            TRIGGER: event.trigger,
        }
        correlation = _correlation(meta)
        if correlation is not None:
            attributes[CORRELATION_ID] = correlation
        span = self.tracer.start_span(
            f"deliver {output}", context=_parent(meta), kind=SpanKind.CLIENT, attributes=attributes
        )
        context = span.get_span_context()
        delivery.traceparent = _traceparent(context)
        delivery.tracestate = context.trace_state.to_header() or None
        return AttemptTrace(span, f"{context.trace_id:032x}")
