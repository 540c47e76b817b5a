"""What an operator sees of a running system, on both transports (SQLite + embedded push,
PostgreSQL + RabbitMQ):

- one trace per user action, across every hop: an order placed through the edge is followed
  by a real OTLP receiver through orders, its payment worker's calls to payments (authorize,
  capture), the event bus, the notifications consumer and the email it sends;
- the real Prometheus server scraping every component's /metrics, with the shipped rules
  loaded: every target is up and the counters of the calls just made moved.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.kit import config
from tests.support.broker import delete_namespace
from tests.support.edge import edge_answers, place_order
from tests.support.env import production_shape
from tests.support.identity import Deployment, bearer, start
from tests.support.mailbox import Mailbox, mailbox
from tests.support.otlp import ReceivedSpan, Receiver, otlp_receiver
from tests.support.processes import Process
from tests.support.prometheus import running_prometheus
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow


@dataclass
class Traced:
    system: Deployment
    edge: Process
    receiver: Receiver
    mail: Mailbox

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.system.settings('gateway').server.port}"


@pytest.fixture(scope="module", params=["sqlite-embedded", "postgresql-rabbitmq"])
def traced(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    production: dict[str, str] = {}
    if request.param == "postgresql-rabbitmq":
        production = production_shape(request)
    with otlp_receiver() as receiver, mailbox() as mail:
        system = start(
            tmp_path_factory.mktemp("traces"),
            config.SERVICES,
            {
                **production,
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "100",
                "POLY_SMTP_HOST": "127.0.0.1",
                "POLY_SMTP_PORT": str(mail.port),
                "POLY_BUS_SUBSCRIBE_WAIT_SECONDS": "20",
            },
        )
        edge = Process.module("gateway", system.environ)
        try:
            url = f"http://127.0.0.1:{system.settings('gateway').server.port}"
            eventually(lambda: edge_answers(url), timeout=30, what="the edge to answer")
            yield Traced(system, edge, receiver, mail)
        finally:
            edge.stop()
            system.stop()
            if "POLY_BUS_URL" in production:
                delete_namespace(production["POLY_BUS_URL"], production["POLY_BUS_PREFIX"])


def _customer(traced: Traced) -> str:
    """A funded customer's access token (set up over gRPC: not part of the traced action)."""
    admin = bearer(traced.system.create_admin())
    _, email = traced.system.register()
    token = traced.system.login(email).access_token
    traced.system.fund(traced.system.own_account(token), admin, 10_000)
    return token


def _by(spans: list[ReceivedSpan], service: str, kind: str, name_part: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.service == service and s.kind == kind and name_part in s.name]


def test_an_order_is_one_trace_from_the_edge_to_the_notification(traced: Traced) -> None:
    token = _customer(traced)
    request_id = f"trace-{uuid.uuid4().hex[:12]}"
    order = place_order(traced.edge_url, token, request_id)

    def root() -> ReceivedSpan | None:
        found = [
            s
            for s in traced.receiver.spans()
            if s.service == "gateway"
            and s.kind == "SERVER"
            and s.attributes.get("poly.request_id") == request_id
        ]
        return found[0] if found else None

    edge_span = eventually(root, timeout=30, what="the edge's span of the request")
    assert edge_span.parent_id == ""
    assert edge_span.name == "POST /v1/orders"
    assert edge_span.attributes["http.route"] == "/v1/orders"

    def complete() -> list[ReceivedSpan] | None:
        # Every hop has arrived, and every span's parent too (processes export independently).
        spans = traced.receiver.trace(edge_span.trace_id)
        consumed = {s.service for s in spans if s.kind == "CONSUMER"}
        ids = {s.span_id for s in spans}
        orphans = [s for s in spans if s.parent_id and s.parent_id not in ids]
        sent = _by(spans, "notifications", "INTERNAL", "send email")
        done = "notifications" in consumed and _by(spans, "payments", "SERVER", "Authorize") and sent
        seen[:] = [f"consumed by {sorted(consumed)}", f"email sent: {bool(sent)}", f"orphans: {orphans}"]
        return spans if done and not orphans else None

    seen: list[str] = []
    try:
        spans = eventually(complete, timeout=60, what=f"the saga of {order} in one trace")
    except AssertionError as error:
        raise AssertionError(f"{error}; {seen}") from None
    by_id = {s.span_id: s for s in spans}

    def parent(span: ReceivedSpan) -> ReceivedSpan:
        return by_id[span.parent_id]

    def ancestors(span: ReceivedSpan) -> list[tuple[str, str]]:
        found = []
        while span.parent_id:
            span = parent(span)
            found.append((span.service, span.kind))
        return found

    [create] = _by(spans, "orders", "SERVER", "OrdersService/CreateOrder")
    assert create.attributes["poly.request_id"] == request_id
    assert create.attributes["poly.resource.name"] == order
    # The edge's request span is the call's parent: one span per request at the edge.
    assert parent(create) == edge_span
    assert edge_span.attributes["rpc.method"] == "CreateOrder"
    assert edge_span.attributes["rpc.grpc.status_code"] == 0

    # orders' payment worker takes the payment in the order's trace: its span under the
    # CreateOrder call, and under it the call to payments over mTLS gRPC, a sale (held and
    # taken in one call: no CapturePayment).
    [taking] = _by(spans, "orders", "INTERNAL", "take payment")
    assert parent(taking) == create
    assert taking.attributes["poly.resource.name"] == order
    [sale] = _by(spans, "payments", "SERVER", "Authorize")
    assert (parent(sale).service, parent(sale).kind) == ("orders", "CLIENT")
    assert parent(parent(sale)) == taking
    assert _by(spans, "payments", "SERVER", "Capture") == []
    assert [s for s in _by(spans, "payments", "CONSUMER", "")] == [], "no event in payments' part of the saga"
    assert [s.name for s in spans if s.name.endswith("/PushEvent")] == []
    # and the notification about it.
    notified = _by(spans, "notifications", "CONSUMER", "")
    assert notified and all(("orders", "PRODUCER") in ancestors(s) for s in notified)
    # the email itself, sent later by the dispatcher, is still in the order's trace.
    [email] = [
        s for s in _by(spans, "notifications", "INTERNAL", "send email") if "OrderPaid" in str(s.attributes)
    ]
    assert email.attributes["poly.channel"] == "EMAIL"
    assert ("notifications", "CONSUMER") in ancestors(email)
    assert {s.service for s in spans} >= {"gateway", "orders", "payments", "notifications"}

    # One request id in every service's logs, tracing aside: the edge's, the payment worker's
    # calls to payments, through the bus and the dispatcher's email.
    def lines_of(service: str) -> list[dict[str, str]]:
        written = list(traced.system.processes[service].lines)
        return [json.loads(line) for line in written if line.startswith("{") and request_id in line]

    def carried(service: str, message: str, method: str = "") -> list[dict[str, str]]:
        return [
            line
            for line in lines_of(service)
            if line["message"] == message and line.get("method", "").endswith(method)
        ]

    expected = [
        ("payments", "finished call", "/AuthorizePayment"),  # a sale: held and taken in one call
        ("orders", "finished call", "/CreateOrder"),
        ("notifications", "delivery sent", ""),  # the email, sent by a background worker
    ]
    if "POLY_BUS_URL" not in traced.system.environ:  # embedded: orders pushed OrderPaid to notifications
        expected.append(("notifications", "finished call", "/PushEvent"))

    def missing() -> list[tuple[str, str, str]]:
        return [where for where in expected if not carried(*where)]

    try:
        eventually(lambda: not missing(), what="the edge's request id in every service's lines")
    except AssertionError as error:
        raise AssertionError(f"{error}; none in {missing()}") from None
    sales = carried("payments", "finished call", "/AuthorizePayment")
    assert all(line["request_id"] == request_id for line in sales)
    assert any(line["code"] == "OK" for line in sales)


RULES = Path(__file__).resolve().parents[2] / "deploy" / "observability" / "prometheus-rules.yml"


def test_prometheus_scrapes_every_component_and_sees_the_calls_move(traced: Traced, tmp_path: Path) -> None:
    components = [*config.SERVICES, "gateway"]
    targets = {
        name: f"127.0.0.1:{traced.system.settings(name).telemetry.metrics_port}" for name in components
    }
    with running_prometheus(targets, tmp_path / "prometheus", rule_files=[RULES]) as prometheus:
        up = prometheus.wait_for_targets_up(timeout=60)
        assert {target.job for target in up} == set(components)
        token = _customer(traced)
        order = place_order(traced.edge_url, token, f"metrics-{uuid.uuid4().hex[:8]}")
        created = prometheus.wait_for(
            'sum(grpc_server_handled_total{job="orders",grpc_method="CreateOrder",grpc_code="OK"})',
            lambda samples: bool(samples) and samples[0].value >= 1,
            timeout=60,
        )
        assert created[0].value >= 1
        prometheus.wait_for(
            'sum(http_server_request_duration_seconds_count{job="gateway",http_route="/v1/orders"})',
            lambda samples: bool(samples) and samples[0].value >= 1,
            timeout=60,
        )
        prometheus.wait_for(
            'sum(poly_bus_events_total{job="orders",outcome="published",event_type="poly.events.v1.OrderCreated"})',
            lambda samples: bool(samples) and samples[0].value >= 1,
            timeout=60,
        )
        prometheus.wait_for(
            'sum(grpc_client_handled_total{job="orders",grpc_method="AuthorizePayment"})',
            lambda samples: bool(samples) and samples[0].value >= 1,
            timeout=60,
        )
        expiry = prometheus.query("min(poly_tls_certificate_expiry_seconds)")
        assert expiry and expiry[0].value > 7 * 86400
        # No label carries an id or a raw path: nothing names the order just placed.
        order_id = order.split("/")[-1]
        series = prometheus.query('{__name__=~"grpc_.+|http_.+|poly_.+"}')
        assert series
        leaked = [
            sample.labels for sample in series if any(order_id in value for value in sample.labels.values())
        ]
        assert not leaked
