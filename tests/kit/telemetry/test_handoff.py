"""kit.telemetry.handoff: a job done by a worker thread joins the trace that asked for it."""

from __future__ import annotations

import threading

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.kit.telemetry.handoff import Handoff


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return provider, spans


def test_the_worker_runs_the_job_in_the_trace_that_asked_for_it() -> None:
    provider, spans = _provider()
    handoff = Handoff("test", tracer_provider=provider)
    with provider.get_tracer("t").start_as_current_span("consume OrderAuthorized") as asking:
        handoff.remember("orders/1")

    def worker() -> None:
        attributes = {"poly.resource.name": "orders/1"}
        with (
            handoff.resumed("orders/1", "capture payment", attributes=attributes),
            provider.get_tracer("t").start_as_current_span("CapturePayment"),
        ):
            pass

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(5)
    by_name = {span.name: span for span in spans.get_finished_spans()}
    job, call = by_name["capture payment"], by_name["CapturePayment"]
    assert job.context.trace_id == asking.get_span_context().trace_id
    assert job.parent is not None and job.parent.span_id == asking.get_span_context().span_id
    assert call.parent is not None and call.parent.span_id == job.context.span_id
    assert job.attributes == {"poly.resource.name": "orders/1"}


def test_a_job_nobody_remembered_starts_its_own_trace_not_the_workers() -> None:
    provider, spans = _provider()
    handoff = Handoff("test", tracer_provider=provider)
    with (
        provider.get_tracer("t").start_as_current_span("worker loop"),
        handoff.resumed("orders/2", "capture"),
    ):
        pass
    job = next(span for span in spans.get_finished_spans() if span.name == "capture")
    assert job.parent is None


def test_forget_and_capacity_bound_what_is_kept() -> None:
    provider, spans = _provider()
    handoff = Handoff("test", capacity=2, tracer_provider=provider)
    with provider.get_tracer("t").start_as_current_span("asking"):
        handoff.remember("a", "b", "c")  # "a" is pushed out
    with handoff.resumed("a", "job a"):
        pass
    with handoff.resumed("b", "job b", forget=True):
        pass
    with handoff.resumed("b", "job b again"):
        pass
    parents = {span.name: span.parent for span in spans.get_finished_spans()}
    assert parents["job a"] is None
    assert parents["job b"] is not None
    assert parents["job b again"] is None


def test_outside_any_trace_nothing_is_remembered() -> None:
    handoff = Handoff("test")
    assert not trace.get_current_span().get_span_context().is_valid
    handoff.remember("x")
    with handoff.resumed("x", "job"):
        assert not trace.get_current_span().is_recording()  # no provider installed: no-op spans
