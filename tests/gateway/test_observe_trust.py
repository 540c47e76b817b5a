"""gateway.observe at a public endpoint: a client's ``traceparent`` is linked from a new trace
the edge samples itself, never continued, unless the TCP peer is a trusted proxy.

Each attack is a client sending a trace context of its choosing: ``sampled=1`` to force a
recorded trace on a sampler that would record nothing, ``sampled=0`` to hide its request, a
trace id to join someone else's trace. The edge is real and in process, in front of the real
gRPC backend of `tests.gateway.test_observe` (which records the metadata each call brought);
the observer is built as the edge builds it (`gateway.server.observer_for`) from an
`EdgeConfig` (or the flags and settings that make one), with the kit's sampler.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway.arguments import from_arguments
from gateway.config import EdgeConfig, Limits, from_environment
from gateway.observe import Observer, trusted_peer
from gateway.server import observer_for
from services.kit.telemetry import Telemetry
from services.kit.telemetry.metrics import Metrics
from services.kit.telemetry.tracing import Tracing, sampler
from services.kit.telemetry_settings import TelemetrySettings
from tests.gateway.test_observe import (
    GET_ROUTE,
    PARENT_ID,
    SERVICE,
    TRACE_ID,
    Answer,
    Backend,
    _calls,
    _run,
    serving_backend,
)

SAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-01"
UNSAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-00"
LOOPBACK = ("127.0.0.1/32",)
"""The test client's address as a trusted proxy."""


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    with serving_backend(tmp_path_factory.mktemp("trust")) as found:
        yield found


class Traced:
    """A telemetry as `services.kit.telemetry.setup` makes it, with the kit's default sampler
    (``parentbased_traceidratio``) at `ratio` and the spans kept in memory."""

    def __init__(self, ratio: float = 1.0) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider(sampler=sampler("parentbased_traceidratio", ratio))
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.telemetry = Telemetry(TelemetrySettings(), Metrics(version="test"), Tracing(provider), None)

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def server_span(self) -> ReadableSpan:
        [found] = [s for s in self.spans() if s.kind is SpanKind.SERVER]
        return found


def _get(backend: Backend, observer: Observer, sent: dict[str, str], **limits: Any) -> tuple[str, Answer]:
    """One GET of a new thing through a real edge with `limits` (the same trusted proxies the
    observer was given, as `observer_for` does)."""
    name = f"things/{uuid.uuid4().hex}"
    [answer] = _run(backend, observer, _calls(("GET", f"/v1/{name}", sent, None)), **limits)
    assert answer.status == 200, answer.body
    return name, answer


def _traceparent(backend: Backend, name: str) -> tuple[str, str, bool]:
    """(trace id, parent span id, sampled) of the traceparent the backend got for `name`."""
    version, trace_id, parent_id, flags = backend.metadata_of(name)["traceparent"].split("-")
    assert version == "00"
    return trace_id, parent_id, bool(int(flags, 16) & 1)


def _public(**changes: Any) -> EdgeConfig:
    return EdgeConfig({}, public_endpoint=True, **changes)


# -- a client's trace context is linked, not continued ---------------------------------------


@pytest.mark.parametrize("client_spans", [False, True], ids=["one-span", "client-spans"])
def test_a_public_endpoint_starts_a_new_trace_linked_to_the_clients(
    backend: Backend, client_spans: bool
) -> None:
    traced = Traced()
    observer = observer_for(_public(client_spans=client_spans), traced.telemetry)
    name, _ = _get(backend, observer, {"traceparent": SAMPLED, "tracestate": "vendor=opaque"})

    server = traced.server_span()
    assert server.name == f"GET {GET_ROUTE}"
    assert server.parent is None, "the client's span is not the edge's parent"
    assert server.context.trace_id != int(TRACE_ID, 16), "a trace of the edge's own"
    [link] = server.links
    assert (link.context.trace_id, link.context.span_id) == (int(TRACE_ID, 16), int(PARENT_ID, 16))
    assert link.context.is_remote, "the client's trace can still be found from the edge's"

    # The backend joins the edge's new trace, under the span that stands for its call.
    parent = server
    if client_spans:
        [parent] = [s for s in traced.spans() if s.kind is SpanKind.CLIENT]
        assert parent.parent is not None and parent.parent.span_id == server.context.span_id
    trace_id, parent_id, sampled = _traceparent(backend, name)
    assert (trace_id, parent_id, sampled) == (
        f"{server.context.trace_id:032x}",
        f"{parent.context.span_id:016x}",
        True,
    )
    assert "tracestate" not in backend.metadata_of(name), "the client's trace state stays with its trace"


@pytest.mark.parametrize(
    ("public_endpoint", "recorded"),
    [(True, False), (False, True)],
    ids=["public-endpoint-refuses", "default-obeys"],
)
def test_a_clients_sampled_flag_cannot_force_recording(
    backend: Backend, public_endpoint: bool, recorded: bool
) -> None:
    traced = Traced(ratio=0.0)  # the edge's own sampler records nothing
    observer = observer_for(EdgeConfig({}, public_endpoint=public_endpoint), traced.telemetry)
    name, _ = _get(backend, observer, {"traceparent": SAMPLED})

    assert (len(traced.spans()) == 1) == recorded
    trace_id, _, sampled = _traceparent(backend, name)
    assert sampled == recorded, "nor can it make the services record the request"
    assert (trace_id == TRACE_ID) == (not public_endpoint)


@pytest.mark.parametrize(
    ("public_endpoint", "recorded"),
    [(True, True), (False, False)],
    ids=["public-endpoint-refuses", "default-obeys"],
)
def test_a_clients_unsampled_flag_cannot_hide_its_request(
    backend: Backend, public_endpoint: bool, recorded: bool
) -> None:
    traced = Traced(ratio=1.0)  # the edge's own sampler records everything
    observer = observer_for(EdgeConfig({}, public_endpoint=public_endpoint), traced.telemetry)
    name, _ = _get(backend, observer, {"traceparent": UNSAMPLED})

    assert (len(traced.spans()) == 1) == recorded
    assert _traceparent(backend, name)[2] == recorded
    if recorded:
        [link] = traced.server_span().links
        assert link.context.trace_id == int(TRACE_ID, 16) and not link.context.trace_flags.sampled


def test_a_forwarded_for_header_does_not_make_a_client_a_trusted_proxy(backend: Backend) -> None:
    traced = Traced()
    proxies = ("10.0.0.0/8",)
    observer = observer_for(_public(limits=Limits(trusted_proxies=proxies)), traced.telemetry)
    sent = {"traceparent": SAMPLED, "X-Forwarded-For": "10.0.0.7"}  # claims to come through a proxy
    name, _ = _get(backend, observer, sent, trusted_proxies=proxies)

    server = traced.server_span()
    assert server.parent is None and server.context.trace_id != int(TRACE_ID, 16)
    assert _traceparent(backend, name)[0] == f"{server.context.trace_id:032x}"


def test_an_invalid_traceparent_at_a_public_endpoint_is_neither_parent_nor_link(backend: Backend) -> None:
    traced = Traced()
    observer = observer_for(_public(), traced.telemetry)
    name, _ = _get(backend, observer, {"traceparent": "00-zzzz-not-a-trace", "tracestate": "a=b"})

    server = traced.server_span()
    assert server.parent is None and server.links == ()
    assert _traceparent(backend, name)[0] == f"{server.context.trace_id:032x}"


# -- a trusted proxy's is continued -----------------------------------------------------------


def test_a_trusted_proxys_trace_context_is_continued(backend: Backend) -> None:
    traced = Traced(ratio=0.0)
    observer = observer_for(_public(limits=Limits(trusted_proxies=LOOPBACK)), traced.telemetry)
    sent = {"traceparent": SAMPLED, "tracestate": "vendor=opaque", "X-Forwarded-For": "203.0.113.9"}
    name, _ = _get(backend, observer, sent, trusted_proxies=LOOPBACK)

    server = traced.server_span()  # recorded: the proxy's sampling decision is obeyed
    assert server.parent is not None and server.parent.span_id == int(PARENT_ID, 16)
    assert server.context.trace_id == int(TRACE_ID, 16) and server.links == ()
    assert (server.attributes or {})["client.address"] == "203.0.113.9", "the client behind the proxy"
    assert _traceparent(backend, name) == (TRACE_ID, f"{server.context.span_id:016x}", True)
    assert backend.metadata_of(name)["tracestate"] == "vendor=opaque"


def test_without_public_endpoint_every_clients_trace_context_is_continued(backend: Backend) -> None:
    traced = Traced()
    observer = observer_for(EdgeConfig({}), traced.telemetry)
    name, _ = _get(backend, observer, {"traceparent": SAMPLED})

    server = traced.server_span()
    assert server.parent is not None and server.parent.span_id == int(PARENT_ID, 16)
    assert server.links == ()
    assert _traceparent(backend, name)[:2] == (TRACE_ID, f"{server.context.span_id:016x}")


# -- an edge that does not trace ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("public_endpoint", "proxies", "passed"),
    [(True, (), False), (True, LOOPBACK, True), (False, (), True)],
    ids=["public-endpoint", "public-endpoint-trusted-proxy", "default"],
)
def test_an_edge_that_does_not_trace_passes_on_only_a_believed_trace_context(
    backend: Backend, public_endpoint: bool, proxies: tuple[str, ...], passed: bool
) -> None:
    edge = EdgeConfig({}, public_endpoint=public_endpoint, limits=Limits(trusted_proxies=proxies))
    observer = observer_for(edge, None)
    assert not observer.tracing
    name, _ = _get(
        backend, observer, {"traceparent": SAMPLED, "tracestate": "vendor=opaque"}, trusted_proxies=proxies
    )
    metadata = backend.metadata_of(name)
    found = (metadata.get("traceparent"), metadata.get("tracestate"))
    assert found == ((SAMPLED, "vendor=opaque") if passed else (None, None))


# -- the settings that build it -------------------------------------------------------------------


def test_poly_gateway_flags_build_an_observer_with_client_spans_at_a_public_endpoint(
    backend: Backend,
) -> None:
    traced = Traced()
    edge = from_arguments(
        ["--reflect", f"--backend={SERVICE}=127.0.0.1:1,plaintext", "--client-spans", "--public-endpoint"]
    )
    name, _ = _get(backend, observer_for(edge, traced.telemetry), {"traceparent": SAMPLED})

    server = traced.server_span()
    [client] = [s for s in traced.spans() if s.kind is SpanKind.CLIENT]
    assert client.name == f"{SERVICE}/GetThing"
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert server.parent is None and [link.context.trace_id for link in server.links] == [int(TRACE_ID, 16)]
    assert _traceparent(backend, name)[:2] == (
        f"{server.context.trace_id:032x}",
        f"{client.context.span_id:016x}",
    )


def test_poly_ups_settings_build_an_observer_with_client_spans_at_a_public_endpoint(
    backend: Backend, tmp_path: Path
) -> None:
    _, edge = from_environment(
        {
            "POLY_HOME": str(tmp_path),
            "POLY_GATEWAY_CLIENT_SPANS": "true",
            "POLY_GATEWAY_PUBLIC_ENDPOINT": "1",
            "POLY_GATEWAY_TRUSTED_PROXIES": "127.0.0.2",
        },
    )
    traced = Traced()
    observer = observer_for(edge, traced.telemetry)
    # From 127.0.0.1, not the trusted 127.0.0.2: a new trace.
    _get(backend, observer, {"traceparent": SAMPLED}, trusted_proxies=("127.0.0.2/32",))

    server = traced.server_span()
    assert server.parent is None and [link.context.span_id for link in server.links] == [int(PARENT_ID, 16)]
    assert [s.name for s in traced.spans() if s.kind is SpanKind.CLIENT] == [f"{SERVICE}/GetThing"]


# -- the trust test itself ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        ("10.1.2.3", True),
        ("192.0.2.7", True),
        ("192.0.2.8", False),
        ("fd00::1", True),
        ("fd01::1", False),
        ("", False),
        ("not-an-address", False),
        ("/tmp/edge.sock", False),
    ],
    ids=["in-range", "single-address", "next-address", "v6-in-range", "v6-outside", "none", "junk", "unix"],
)
def test_trusted_peer_is_the_trusted_proxies_test(peer: str, trusted: bool) -> None:
    check = trusted_peer(("10.0.0.0/8", "192.0.2.7/32", "fd00::/16"))
    assert check is not None
    assert check(peer) is trusted
    assert check(peer) is trusted, "the remembered answer is the same"


def test_without_trusted_proxies_no_peer_is_trusted() -> None:
    assert trusted_peer(()) is None
