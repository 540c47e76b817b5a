"""The edge end to end: ``python -m gateway`` in front of all five services, over HTTP/JSON.

Every service runs as a process with real certificates; the edge reaches them over mTLS as
``gateway``. The cases go through real routes compiled from the descriptor set.
"""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from typing import Any

import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.conftest import Answer, Edge
from tests.support.identity import PASSWORD
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow


def _detail(answer: Answer, kind: str) -> dict[str, Any]:
    body = answer.json()
    assert set(body) >= {"code", "message", "details"}, body
    return next(d for d in body["details"] if d["@type"].endswith(kind))


def test_health_and_readiness(edge: Edge) -> None:
    assert edge.call("GET", "/healthz").json() == {"status": "SERVING"}
    ready = edge.call("GET", "/readyz")
    assert ready.status == 200, ready.body
    assert set(ready.json()["backends"].values()) == {"SERVING"}


def test_register_login_and_create_an_order(edge: Edge) -> None:
    user, token = edge.token()
    bearer = {"Authorization": f"Bearer {token}", "X-Request-Id": "req-123"}
    order = {
        "lines": [
            {"sku": "BOOK-1", "quantity": 2, "unitPrice": {"currencyCode": "EUR", "amountMinor": "1250"}}
        ]
    }
    created = edge.call("POST", "/v1/orders", order, headers=bearer)
    assert created.status == 201, created.body  # (poly.options.v1.http_status) = 201
    assert created.headers["X-Request-Id"] == "req-123"
    body = created.json()
    assert body["owner"] == user
    assert body["total"] == {"currencyCode": "EUR", "amountMinor": "2500"}, "int64 as a string"
    assert body["failureReason"] == "", "unpopulated fields are emitted"
    got = edge.call("GET", f"/v1/{body['name']}", headers=bearer)
    assert got.status == 200 and got.json()["name"] == body["name"]
    listed = edge.call("GET", "/v1/orders?page_size=1&_=123&cb=9", headers=bearer)
    assert listed.status == 200, listed.body
    assert len(listed.json()["orders"]) == 1


@pytest.mark.parametrize(
    ("method", "path", "status", "reason"),
    [
        ("GET", "/v1/nowhere", 404, "ROUTE_NOT_FOUND"),
        ("DELETE", "/v1/orders/abc", 405, "METHOD_NOT_ALLOWED"),
        ("POST", "/v1/tokens:introspect", 404, "ROUTE_NOT_FOUND"),
        ("GET", "/v1/orders/abc", 401, "TOKEN_MISSING"),
    ],
    ids=["unknown-path", "wrong-method", "internal-method-not-routed", "no-token"],
)
def test_routing_and_auth_errors_are_statuses(
    edge: Edge, method: str, path: str, status: int, reason: str
) -> None:
    answer = edge.call(method, path, {} if method == "POST" else None)
    assert answer.status == status, answer.body
    assert _detail(answer, "ErrorInfo")["reason"] == reason
    assert answer.headers["X-Request-Id"]
    if status == 405:
        assert answer.headers["Allow"] == "GET, HEAD"
    if status == 401:
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("path", "raw", "headers", "field"),
    [
        ("/v1/auth:login", b"{not json", {}, None),
        ("/v1/auth:login", b'{"email": 5}', {}, "email"),
        ("/v1/auth:login", b'{"emial": "a@b.c"}', {}, None),
        ("/v1/orders?colour=red", b"{}", {}, "colour"),
        ("/v1/auth:login", b"{}", {"Grpc-Timeout": "soon"}, None),
    ],
    ids=["malformed-json", "wrong-type", "unknown-field", "unknown-query-parameter", "bad-grpc-timeout"],
)
def test_bad_requests_are_400_with_violations(
    edge: Edge, path: str, raw: bytes, headers: dict[str, str], field: str | None
) -> None:
    answer = edge.call("POST", path, raw=raw, headers=headers)
    assert answer.status == 400, answer.body
    violations = _detail(answer, "BadRequest")["fieldViolations"]
    assert violations
    if field:
        assert any(field in v["field"] for v in violations), violations


def test_a_body_over_the_limit_is_413(edge: Edge) -> None:
    answer = edge.call("POST", "/v1/auth:login", raw=b'{"email": "' + b"a" * 8000 + b'"}')
    assert answer.status == 413
    assert answer.json()["code"] == 8


def test_watch_order_streams_ndjson_and_sse(edge: Edge) -> None:
    _user, token = edge.token()
    bearer = {"Authorization": f"Bearer {token}"}
    order = {
        "lines": [{"sku": "A", "quantity": 1, "unitPrice": {"currencyCode": "EUR", "amountMinor": "100"}}]
    }
    name = edge.call("POST", "/v1/orders", order, headers=bearer).json()["name"]
    # The account is empty: the order is cancelled here, or its payment fails first.
    cancelled = edge.call("POST", f"/v1/{name}:cancel", {}, headers=bearer)
    assert cancelled.status in (200, 400), cancelled.body
    terminal = {"STATE_CANCELLED", "STATE_PAYMENT_FAILED"}
    ndjson = edge.call("GET", f"/v1/{name}:watch", headers=bearer)
    assert ndjson.status == 200
    assert ndjson.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in ndjson.body.splitlines()]
    assert lines[-1]["result"]["order"]["state"] in terminal, "the server ends the stream at a terminal state"
    sse = edge.call("GET", f"/v1/{name}:watch", headers={**bearer, "Accept": "text/event-stream"})
    assert sse.headers["Content-Type"].startswith("text/event-stream")
    events = [
        json.loads(line[len("data:") :])
        for line in sse.body.decode().splitlines()
        if line.startswith("data:")
    ]
    assert events[-1]["order"]["state"] in terminal


def _states(answer: Answer) -> list[str]:
    """The order states of a finished watch, framed as NDJSON or as SSE."""
    lines = answer.body.decode().splitlines()
    if answer.headers["Content-Type"].startswith("text/event-stream"):
        return [
            json.loads(line[len("data:") :])["order"]["state"] for line in lines if line.startswith("data:")
        ]
    return [json.loads(line)["result"]["order"]["state"] for line in lines]


@pytest.fixture(scope="module")
def shopper(edge: Edge) -> dict[str, str]:
    """The headers of a customer whose account an admin funded through the edge."""
    _user, token = edge.token()
    bearer = {"Authorization": f"Bearer {token}"}
    accounts = eventually(
        lambda: edge.call("GET", "/v1/accounts", headers=bearer).json().get("accounts"),
        what="the customer's account, opened from UserRegistered",
    )
    admin = {"Authorization": f"Bearer {edge.system.create_admin('funder@example.com')}"}
    funds = {"amount": {"currencyCode": "EUR", "amountMinor": "100000"}, "requestId": str(uuid.uuid4())}
    funded = edge.call("POST", f"/v1/{accounts[0]['name']}:fund", funds, headers=admin)
    assert funded.status == 200, funded.body
    return bearer


@pytest.mark.parametrize(
    ("parameter", "accept"),
    [
        ("untilStates", None),
        ("until_states", None),
        ("untilStates", "text/event-stream"),
        ("until_states", "text/event-stream"),
    ],
    ids=["json-name-ndjson", "proto-name-ndjson", "json-name-sse", "proto-name-sse"],
)
def test_a_watch_until_paid_ends_after_the_paid_snapshot(
    edge: Edge, shopper: dict[str, str], parameter: str, accept: str | None
) -> None:
    order = {
        "lines": [{"sku": "A", "quantity": 1, "unitPrice": {"currencyCode": "EUR", "amountMinor": "100"}}]
    }
    name = edge.call("POST", "/v1/orders", order, headers=shopper).json()["name"]
    headers = {**shopper, "Accept": accept} if accept else shopper  # NDJSON by default
    watched = edge.call("GET", f"/v1/{name}:watch?{parameter}=STATE_PAID", headers=headers)
    assert watched.status == 200, watched.body
    assert watched.headers["Content-Type"].startswith(accept or "application/x-ndjson")
    states = _states(watched)
    assert states[-1] == "STATE_PAID", "the server ends the stream at PAID, before fulfilment"
    assert set(states) <= {"STATE_PENDING", "STATE_AWAITING_PAYMENT", "STATE_PAID"}
    again = edge.call("GET", f"/v1/{name}:watch?{parameter}=STATE_PAID", headers=headers)
    assert _states(again) == ["STATE_PAID"], "an order already PAID: the first snapshot is the last"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("untilStates=STATE_UNSPECIFIED", "until_states[0]"),
        ("until_states=STATE_PAID&until_states=0", "until_states[1]"),
    ],
    ids=["unspecified", "unspecified-by-number"],
)
def test_until_states_unspecified_is_400_before_streaming(edge: Edge, query: str, field: str) -> None:
    _user, token = edge.token()
    bearer = {"Authorization": f"Bearer {token}"}
    order = {
        "lines": [{"sku": "A", "quantity": 1, "unitPrice": {"currencyCode": "EUR", "amountMinor": "100"}}]
    }
    name = edge.call("POST", "/v1/orders", order, headers=bearer).json()["name"]
    answer = edge.call("GET", f"/v1/{name}:watch?{query}", headers=bearer)
    assert answer.status == 400, answer.body
    assert _detail(answer, "ErrorInfo")["reason"] == "UNTIL_STATES_INVALID"
    assert [v["field"] for v in _detail(answer, "BadRequest")["fieldViolations"]] == [field]


def test_watching_another_users_order_is_refused_before_streaming(edge: Edge) -> None:
    _alice, alice = edge.token()
    _bob, bob = edge.token()
    order = {
        "lines": [{"sku": "A", "quantity": 1, "unitPrice": {"currencyCode": "EUR", "amountMinor": "100"}}]
    }
    name = edge.call("POST", "/v1/orders", order, headers={"Authorization": f"Bearer {alice}"}).json()["name"]
    # AIP-211: permission before existence, so another's order and a missing one are both 403.
    for asked in (name, "orders/does-not-exist"):
        answer = edge.call("GET", f"/v1/{asked}:watch", headers={"Authorization": f"Bearer {bob}"})
        assert answer.status == 403, answer.body
        assert _detail(answer, "ErrorInfo")["reason"] == "NOT_OWNER"
        assert _detail(answer, "ErrorInfo")["metadata"] == {"resource": asked}


def test_required_fields_are_enforced_through_the_edge(edge: Edge) -> None:
    logout = edge.call("POST", "/v1/auth:logout", {})
    assert logout.status == 400, logout.body
    assert [v["field"] for v in _detail(logout, "BadRequest")["fieldViolations"]] == ["refresh_token"]
    admin = {"Authorization": f"Bearer {edge.system.create_admin()}"}
    created = edge.call("POST", "/v1/clients", headers=admin)
    assert created.status == 400, created.body
    assert _detail(created, "ErrorInfo")["reason"] == "REQUIRED_FIELD_MISSING"
    assert edge.call("GET", "/v1/clients", headers=admin).json().get("clients", []) == []


def test_openapi_and_well_known_documents(edge: Edge) -> None:
    document = edge.call("GET", "/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert document["info"]["license"] == {"name": "Apache-2.0", "identifier": "Apache-2.0"}
    assert "/v1/orders" in document["paths"]
    assert not any("introspect" in path for path in document["paths"])
    validate(document)  # openapi-spec-validator, on the document as the edge serves it
    jwks = edge.call("GET", "/.well-known/jwks.json")
    assert jwks.status == 200 and jwks.json()["keys"]
    discovery = edge.call("GET", "/.well-known/openid-configuration")
    assert discovery.status == 200
    assert {"issuer", "jwks_uri"} <= set(discovery.json()), discovery.json()


def test_an_empty_reply_is_204_without_a_body(edge: Edge) -> None:
    _user, token = edge.token()
    login_again = edge.call("POST", "/v1/auth:logout", {"refreshToken": "no-such-token"})
    assert login_again.status == 204, login_again.body
    assert login_again.body == b""
    assert token


def test_the_document_declares_the_success_statuses(edge: Edge) -> None:
    paths = edge.call("GET", "/openapi.json").json()["paths"]
    assert "201" in paths["/v1/orders"]["post"]["responses"]
    assert "204" in paths["/v1/auth:logout"]["post"]["responses"]
    assert "200" in paths["/v1/orders"]["get"]["responses"]


def test_one_trace_and_one_request_id_from_the_edge_to_the_service(edge: Edge) -> None:
    """The client's trace continues through the edge into the auth service; both access lines
    carry the request id and the trace id, and the edge's /metrics counted the call."""
    request_id, trace_id = f"e2e-{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    headers = {"X-Request-Id": request_id, "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    email = f"traced-{uuid.uuid4().hex[:10]}@example.com"
    answer = edge.call("POST", "/v1/auth:register", {"email": email, "password": PASSWORD}, headers=headers)
    assert answer.status == 201, answer.body
    assert answer.headers["X-Request-Id"] == request_id

    line = json.loads(edge.process.wait_for_line(lambda text: f'"request_id": "{request_id}"' in text))
    assert (line["logger"], line["route"], line["status"], line["trace_id"]) == (
        "poly.access",
        "/v1/auth:register",
        201,
        trace_id,
    )
    auth = edge.system.processes["auth"]
    served = json.loads(auth.wait_for_line(lambda text: f'"request_id": "{request_id}"' in text))
    assert served["trace_id"] == trace_id, "the service's access line is in the client's trace"

    port = int(edge.system.environ["POLY_GATEWAY_METRICS_PORT"])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    routes = {s.labels["http_route"] for s in families["http_server_request_duration_seconds"].samples}
    assert "/v1/auth:register" in routes
    # Templates only: outside their {variables}, no id (hex run) and no e-mail address.
    literals = [re.sub(r"\{[^}]*\}", "", route) for route in routes]
    assert not any(re.search(r"[0-9a-f]{12}|@", literal) for literal in literals), routes
    handled = [
        s
        for s in families["grpc_client_handled"].samples
        if s.labels["grpc_method"] == "Register" and s.labels["grpc_code"] == "OK"
    ]
    assert handled and handled[0].labels["grpc_service"] == "poly.auth.v1.AuthService"
