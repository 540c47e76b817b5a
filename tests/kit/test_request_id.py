"""kit.request_id: one request id through every service a request reaches.

Real parts: two kit servers over mTLS in this process, ``orders`` (A) calling ``payments`` (B)
through `kit.clients.channel`, as a service calls another; each logs through the kit's own
formatter (`tests.support.log_lines`). A and B run in separate server threads, so B learns
the id only from the metadata on the wire. The bus's part is in tests/kit/bus/test_tracing_request_id.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import string
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import wrappers_pb2
from hypothesis import given
from hypothesis import strategies as st

from services.kit import clients, request_id, server, tls
from services.kit.telemetry.handoff import Handoff
from tests.support.env import settings_for
from tests.support.log_lines import LogLines, captured

_S = wrappers_pb2.StringValue
UPSTREAM, DOWNSTREAM = "poly.test.v1.Upstream", "poly.test.v1.Downstream"
ECHO = f"/{DOWNSTREAM}/Echo"
REQUEST_ID = "0f3c2a9e-5b1d-4e7a-9c3b-2d8f6a1e4b70"

# -- the rule --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("a", True),
        (REQUEST_ID, True),
        ("A-z.0_9:-", True),
        ("r" * 128, True),
        ("r" * 129, False),
        ("", False),
        ("two words", False),
        ("line\r\nX-Admin: true", False),
        ("trailing-newline\n", False),
        ('{"quoted": 1}', False),
        ("caf\u00e9", False),
        ("%0d%0a", False),
        (b"bytes", False),
        (None, False),
        (123, False),
    ],
    ids=[
        "one-char",
        "uuid",
        "every-punctuation-allowed",
        "128-chars",
        "129-chars",
        "empty",
        "space",
        "crlf",
        "trailing-newline",
        "json",
        "non-ascii",
        "percent-encoded",
        "bytes",
        "none",
        "int",
    ],
)
def test_the_rule_is_the_edges(value: object, valid: bool) -> None:
    assert request_id.is_valid(value) is valid
    assert request_id.valid_or_none(value) == (value if valid else None)


@given(st.text(max_size=200))
def test_a_valid_id_can_never_carry_anything_but_its_alphabet(value: str) -> None:
    if request_id.is_valid(value):
        assert 1 <= len(value) <= request_id.MAX_LENGTH
        assert set(value) <= set(string.ascii_letters + string.digits + "._:-")


@dataclass(frozen=True)
class _Item:
    key: str
    value: str | bytes


def test_the_first_x_request_id_in_metadata_decides() -> None:
    other = _Item("user-agent", "grpc")
    assert request_id.from_metadata([other, _Item("x-request-id", "r1")]) == "r1"
    assert request_id.from_metadata([other]) is None
    assert request_id.from_metadata(None) is None
    # A second id cannot stand in for an invalid first one.
    assert request_id.from_metadata([_Item("x-request-id", "bad id"), _Item("x-request-id", "r2")]) is None
    assert request_id.from_metadata([_Item("x-request-id", b"r3")]) is None


def test_bound_makes_a_valid_id_current_and_an_invalid_one_hides_the_outer_one() -> None:
    assert request_id.current() is None
    with request_id.bound("outer") as outer:
        assert outer == request_id.current() == "outer"
        with request_id.bound("bad\r\nid") as inner:
            assert inner is None and request_id.current() is None
        assert request_id.current() == "outer"
        assert request_id.run_bound("job", request_id.current) == "job"
        assert request_id.current() == "outer"
    assert request_id.current() is None


def test_a_stream_has_its_id_current_while_it_is_iterated_and_not_between() -> None:
    def produce() -> Iterator[str | None]:
        yield request_id.current()
        yield request_id.current()

    stream = request_id.iterate_bound("r1", produce())
    assert request_id.current() is None, "nothing is current before the stream starts"
    assert list(stream) == ["r1", "r1"]
    assert request_id.current() is None


# -- two real services: A (orders) calls B (payments) through a kit channel ------------------


def _downstream() -> server.Registration:
    def echo(request: _S, context: grpc.ServicerContext) -> _S:
        logging.getLogger("poly.test.downstream").info("echoing")
        got = [item.value for item in context.invocation_metadata() or () if item.key == "x-request-id"]
        return _S(value=json.dumps(got))

    handler = grpc.unary_unary_rpc_method_handler(
        echo, request_deserializer=_S.FromString, response_serializer=_S.SerializeToString
    )
    generic = grpc.method_handlers_generic_handler(DOWNSTREAM, {"Echo": handler})
    return server.Registration(DOWNSTREAM, lambda s: s.add_generic_rpc_handlers((generic,)))


def _upstream(downstream: grpc.Channel) -> server.Registration:
    echo = downstream.unary_unary(
        ECHO, request_serializer=_S.SerializeToString, response_deserializer=_S.FromString
    )
    log = logging.getLogger("poly.test.upstream")

    def call(request: _S, context: grpc.ServicerContext) -> _S:
        log.info("calling downstream")
        answer: _S = echo(_S(), timeout=10)
        return answer

    def call_with_own(request: _S, context: grpc.ServicerContext) -> _S:
        answer: _S = echo(_S(), timeout=10, metadata=[("x-request-id", "callers-own")])
        return answer

    def stream(request: _S, context: grpc.ServicerContext) -> Iterator[_S]:
        # The body runs as gRPC iterates the stream, after the middleware has returned.
        for _ in range(int(request.value)):
            log.info("streaming")
            yield echo(_S(), timeout=10)

    def unary(fn: object) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=_S.FromString, response_serializer=_S.SerializeToString
        )

    handlers = {
        "Call": unary(call),
        "CallWithOwn": unary(call_with_own),
        "Stream": grpc.unary_stream_rpc_method_handler(
            stream, request_deserializer=_S.FromString, response_serializer=_S.SerializeToString
        ),
    }
    generic = grpc.method_handlers_generic_handler(UPSTREAM, handlers)
    return server.Registration(UPSTREAM, lambda s: s.add_generic_rpc_handlers((generic,)))


@dataclass
class Services:
    upstream: grpc.Channel
    """To A, as the edge calls it (the metadata a test gives is what goes on the wire)."""
    lines: LogLines

    def call(self, method: str, metadata: list[tuple[str, str]] | None = None, value: str = "") -> list[str]:
        """What B received as x-request-id, once per call A made."""
        path = f"/{UPSTREAM}/{method}"
        if method == "Stream":
            stream = self.upstream.unary_stream(
                path, request_serializer=_S.SerializeToString, response_deserializer=_S.FromString
            )
            answers = list(stream(_S(value=value), metadata=metadata, timeout=10))
        else:
            unary = self.upstream.unary_unary(
                path, request_serializer=_S.SerializeToString, response_deserializer=_S.FromString
            )
            answers = [unary(_S(value=value), metadata=metadata, timeout=10)]
        return [value for answer in answers for value in json.loads(answer.value)]


@pytest.fixture
def services(certs: Path) -> Iterator[Services]:
    base = {"POLY_TLS_DIR": str(certs), "POLY_ORDERS_PORT": "0", "POLY_PAYMENTS_PORT": "0"}
    with captured() as lines:
        b = server.start(settings_for("payments", base), [_downstream()])
        a_settings = settings_for("orders", {**base, "POLY_PAYMENTS_ADDRESS": f"localhost:{b.port}"})
        downstream = clients.channel(a_settings, "payments")
        a = server.start(a_settings, [_upstream(downstream)])
        edge = settings_for("gateway", base)
        upstream = grpc.secure_channel(
            f"localhost:{a.port}",
            tls.channel_credentials(edge.tls),
            options=[("grpc.ssl_target_name_override", "orders")],
        )
        try:
            yield Services(upstream, lines)
        finally:
            upstream.close()
            a.drain()
            downstream.close()
            b.drain()


def test_a_called_service_logs_the_id_its_caller_received(services: Services) -> None:
    assert services.call("Call", [("x-request-id", REQUEST_ID)]) == [REQUEST_ID]
    [b_access] = services.lines.access(ECHO)
    assert b_access["request_id"] == REQUEST_ID
    [a_access] = services.lines.access(f"/{UPSTREAM}/Call")
    assert a_access["request_id"] == REQUEST_ID
    # Every line written while the call runs carries it, in both services.
    for message in ("calling downstream", "echoing"):
        [line] = services.lines.where(message=message)
        assert line["request_id"] == REQUEST_ID, line


def test_a_call_without_an_id_sends_none_and_inherits_none(services: Services) -> None:
    # First calls with ids, so that a pool thread that held one serves the calls without.
    for _ in range(3):
        assert services.call("Call", [("x-request-id", REQUEST_ID)]) == [REQUEST_ID]
    before = len(services.lines.access(ECHO))
    for _ in range(6):
        assert services.call("Call") == []
    unmarked = services.lines.access(ECHO)[before:]
    assert len(unmarked) == 6 and all("request_id" not in line for line in unmarked)
    handler_lines = services.lines.where(message="calling downstream")[3:]
    assert len(handler_lines) == 6 and all("request_id" not in line for line in handler_lines)


@pytest.mark.parametrize(
    "metadata",
    [
        [("x-request-id", "r" * 129)],
        [("x-request-id", "spoofed id")],
        [("x-request-id", '{"level":"critical","message":"forged"}')],
        [("x-request-id", "%0d%0aX-Admin:%20true")],
        [("x-request-id", "bad value"), ("x-request-id", "second-chance")],
    ],
    ids=["too-long", "space", "json-injection", "percent-encoded-crlf", "valid-after-invalid"],
)
def test_an_invalid_id_is_neither_logged_nor_passed_on(
    services: Services, metadata: list[tuple[str, str]]
) -> None:
    assert services.call("Call", metadata) == [], "nothing is passed on"
    for _, value in metadata:
        assert value not in services.lines.text(), "never logged raw"
    lines = [*services.lines.access(f"/{UPSTREAM}/Call"), *services.lines.access(ECHO)]
    assert len(lines) == 2 and all("request_id" not in line for line in lines)
    # A CR or LF cannot even be sent in gRPC metadata (the client refuses it); an event can
    # carry one, and the bus's test forges it there. The rule itself refuses it here:
    assert request_id.from_metadata([_Item("x-request-id", "r1\r\nX-Admin: true")]) is None


def test_an_id_the_caller_sets_itself_is_sent_alone(services: Services) -> None:
    assert services.call("CallWithOwn", [("x-request-id", REQUEST_ID)]) == ["callers-own"]
    assert services.call("CallWithOwn") == ["callers-own"]


def test_a_streaming_handler_has_the_id_while_its_stream_is_iterated(services: Services) -> None:
    assert services.call("Stream", [("x-request-id", REQUEST_ID)], value="3") == [REQUEST_ID] * 3
    streaming = services.lines.where(message="streaming")
    assert [line.get("request_id") for line in streaming] == [REQUEST_ID] * 3
    [a_access] = services.lines.access(f"/{UPSTREAM}/Stream")
    assert a_access["request_id"] == REQUEST_ID
    assert [line["request_id"] for line in services.lines.access(ECHO)] == [REQUEST_ID] * 3
    # And a stream without one, served after it, has none.
    assert services.call("Stream", value="2") == []


# -- a hand-off to a worker (the payment worker, the notifications dispatcher) ---------------


def test_a_job_handed_to_a_worker_thread_runs_with_the_id_that_asked_for_it() -> None:
    handoff = Handoff("test")  # no tracer provider: the id travels with tracing off too
    with request_id.bound(REQUEST_ID):
        handoff.remember("orders/1")
    handoff.remember("orders/2")  # asked for outside any request: nothing to remember
    seen: dict[str, str | None] = {}

    def worker() -> None:
        for key in ("orders/1", "orders/2", "orders/3"):
            with handoff.resumed(key, "capture payment", forget=True):
                seen[key] = request_id.current()
        seen["after"] = request_id.current()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(5)
    assert seen == {"orders/1": REQUEST_ID, "orders/2": None, "orders/3": None, "after": None}


def test_a_job_resumed_in_an_asyncio_task_carries_the_id_into_its_threads() -> None:
    """As the notifications dispatcher does: ``with resumed(...)`` around ``await to_thread``."""
    handoff = Handoff("test")
    with request_id.bound(REQUEST_ID):
        handoff.remember("event-1")
    log = logging.getLogger("poly.test.dispatcher")

    async def deliver() -> str | None:
        with handoff.resumed("event-1", "send email"):
            await asyncio.to_thread(log.info, "delivery sent")
            return await asyncio.to_thread(request_id.current)

    with captured() as lines:
        assert asyncio.run(deliver()) == REQUEST_ID
    [line] = lines.where(message="delivery sent")
    assert line["request_id"] == REQUEST_ID
