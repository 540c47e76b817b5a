"""kit.telemetry.rpc internals: the server's fast read of a caller's trace context."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.kit.telemetry.rpc import _parent

_W3C = TraceContextTextMapPropagator()
_VALID = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _seen(context: object) -> trace.SpanContext:
    return trace.get_current_span(context).get_span_context()  # type: ignore[arg-type]


def _same_as_the_propagator(carrier: dict[str, str]) -> None:
    assert _seen(_parent(carrier)) == _seen(_W3C.extract(carrier))


@pytest.mark.parametrize(
    "traceparent",
    [
        _VALID,
        _VALID[:-2] + "00",  # not sampled
        _VALID[:-2] + "ff",  # flags the SDK keeps as given
        _VALID.upper(),  # upper-case hex is not W3C
        "00-" + "0" * 32 + "-b7ad6b7169203331-01",  # all-zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01",  # all-zero span id
        "ff" + _VALID[2:],  # the forbidden version
        "01" + _VALID[2:] + "-future",  # a later version with more fields
        "00" + _VALID[2:] + "-more",  # version 00 with more fields
        _VALID.replace("-", "_"),
        _VALID[:-1],
        " " + _VALID,
        "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
        "",
    ],
    ids=[
        "valid",
        "unsampled",
        "flags-ff",
        "upper-case",
        "zero-trace",
        "zero-span",
        "version-ff",
        "future-version",
        "version-00-extra",
        "underscores",
        "short",
        "leading-space",
        "not-hex",
        "empty",
    ],
)
def test_a_traceparent_is_read_as_the_w3c_propagator_reads_it(traceparent: str) -> None:
    _same_as_the_propagator({"traceparent": traceparent})


def test_a_tracestate_goes_with_the_parent() -> None:
    carrier = {"traceparent": _VALID, "tracestate": "vendor=opaque"}
    _same_as_the_propagator(carrier)
    assert _seen(_parent(carrier)).trace_state.get("vendor") == "opaque"


def test_the_parent_is_a_remote_context_of_its_own() -> None:
    context = _seen(_parent({"traceparent": _VALID}))
    assert context.is_remote and context.is_valid
    assert context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C and context.span_id == 0xB7AD6B7169203331
    assert context.trace_flags.sampled


@given(st.text(alphabet="0123456789abcdefABG- _", min_size=50, max_size=60))
def test_any_text_is_read_as_the_propagator_reads_it(traceparent: str) -> None:
    _same_as_the_propagator({"traceparent": traceparent})


@given(st.integers(0, 54), st.sampled_from("0f-gA "))
def test_a_valid_traceparent_with_one_character_changed_is_read_as_the_propagator_reads_it(
    position: int, replacement: str
) -> None:
    _same_as_the_propagator({"traceparent": _VALID[:position] + replacement + _VALID[position + 1 :]})
