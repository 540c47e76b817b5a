"""Carrying a trace and a request id across a hand-off to a worker thread, without the service
touching OpenTelemetry: the code that asks for a job `remember`s the trace and the request id
(`kit.request_id`) it runs in, under the job's key; the worker that does the job later runs it
`resumed` under that trace, with that request id current (its log lines and calls carry it,
tracing on or off).

The orders payment worker and the notifications dispatcher use it, so a saga step done by a
background worker stays in the trace of the call or event that asked for it. Memory is bounded (the
oldest keys are forgotten first) and it is best effort: after a restart, a job that is picked
up again starts a new trace.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from services.kit import request_id

__all__ = ["Handoff"]


class _Origin(NamedTuple):
    """What was running when a job was asked for."""

    trace: trace.SpanContext | None
    request_id: str | None


class Handoff:
    """``key -> trace context and request id`` of the work that asked for the job `key`."""

    def __init__(
        self, name: str, *, capacity: int = 10_000, tracer_provider: trace.TracerProvider | None = None
    ) -> None:
        self._tracer = trace.get_tracer(f"poly.{name}", tracer_provider=tracer_provider)
        self._capacity = capacity
        self._remembered: OrderedDict[str, _Origin] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, *keys: str) -> None:
        """Note the trace and request id running now as the origin of the jobs `keys` (no-op
        outside both)."""
        context = trace.get_current_span().get_span_context()
        origin = _Origin(context if context.is_valid else None, request_id.current())
        if origin.trace is None and origin.request_id is None:
            return
        with self._lock:
            for key in keys:
                self._remembered[key] = origin
                self._remembered.move_to_end(key)
            while len(self._remembered) > self._capacity:
                self._remembered.popitem(last=False)

    @contextmanager
    def resumed(
        self, key: str, name: str, *, attributes: Mapping[str, Any] | None = None, forget: bool = False
    ) -> Iterator[None]:
        """Run the job `key` in an INTERNAL span `name`, a child of the remembered trace (a new
        trace when none was remembered), with the remembered request id current (none when
        none was); `forget` drops the key once it is done."""
        with self._lock:
            origin = self._remembered.pop(key, None) if forget else self._remembered.get(key)
        origin = origin or _Origin(None, None)
        parent = (
            trace.set_span_in_context(trace.NonRecordingSpan(origin.trace))
            if origin.trace is not None
            else None
        )
        # A fresh context: whatever the worker thread had current is not this job's parent.
        token = otel_context.attach(parent if parent is not None else otel_context.Context())
        try:
            with (
                request_id.bound(origin.request_id),
                self._tracer.start_as_current_span(
                    name,
                    kind=SpanKind.INTERNAL,
                    attributes=dict(attributes or {}),
                    record_exception=False,  # exception text may carry SQL or URLs: the logs redact it
                ),
            ):
                yield
        finally:
            otel_context.detach(token)
