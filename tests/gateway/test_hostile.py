"""The edge under attack: real ``python -m gateway`` processes in front of a real gRPC backend
over mTLS, each case an attack that must be refused with nothing changed behind the edge.

The backend (``acme.vault.v1.VaultService``, built from a descriptor set with generic
handlers) stores entries and records every call it gets with its metadata, so "nothing
changed" is checked where it matters: the backend saw no call and holds what it held.
``WhoAmI`` accepts exactly ``authorization: Bearer good-<name>`` and answers UNAUTHENTICATED
to anything else, as a service of the kit does. Requests come from 127.0.0.1 or, standing for
a second client or a proxy, from 127.0.0.2 (Linux routes all of 127/8 to loopback).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from gateway.config import Limits
from services.kit import config, tls
from tests.gateway.conftest import STANDALONE
from tests.support.env import free_port
from tests.support.http import Answer, http_call, raw_exchange
from tests.support.processes import Process
from tests.support.protos import compile_proto

pytestmark = pytest.mark.slow

SERVICE = "acme.vault.v1.VaultService"
PROTO = """
syntax = "proto3";
package acme.vault.v1;
import "google/api/annotations.proto";
import "google/protobuf/struct.proto";

service VaultService {
  rpc CreateEntry(CreateEntryRequest) returns (Entry) {
    option (google.api.http) = { post: "/v1/entries" body: "entry" };
  }
  rpc ReplaceEntry(Entry) returns (Entry) {
    option (google.api.http) = { post: "/v1/{name=entries/*}:replace" body: "*" };
  }
  rpc GetEntry(GetEntryRequest) returns (Entry) {
    option (google.api.http) = { get: "/v1/{name=entries/*}" };
  }
  rpc ListEntries(ListEntriesRequest) returns (ListEntriesResponse) {
    option (google.api.http) = { get: "/v1/entries" };
  }
  rpc WhoAmI(WhoAmIRequest) returns (Caller) {
    option (google.api.http) = { get: "/v1/whoami" };
  }
}

message Label { string display_name = 1; }
message Entry {
  string name = 1;
  string display_name = 2;
  Label label = 3;
  repeated Label labels = 4;
  map<string, Label> labels_by_key = 5;
  google.protobuf.Value data = 6;
}
message CreateEntryRequest { Entry entry = 1; string entry_id = 2; }
message GetEntryRequest { string name = 1; }
message ListEntriesRequest { int32 page_size = 1; string page_token = 2; Label label = 3; }
message ListEntriesResponse { repeated Entry entries = 1; string next_page_token = 2; }
message WhoAmIRequest {}
message Caller { string subject = 1; string authorization = 2; string forwarded_for = 3; }
"""
_GOOD_TOKEN = re.compile(r"Bearer good-(\w+)")


@dataclass
class Vault:
    """The backend's state: its entries and every call it got (method, metadata)."""

    classes: dict[str, type[Message]]
    entries: dict[str, Message] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> tuple[int, dict[str, bytes]]:
        with self.lock:
            return len(self.calls), {
                k: v.SerializeToString(deterministic=True) for k, v in self.entries.items()
            }

    def forwarded_for(self) -> list[str]:
        with self.lock:
            return [metadata.get("x-forwarded-for", "") for _, metadata in self.calls]

    def handle(self, method: str, request: Any, context: grpc.ServicerContext) -> Message:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        with self.lock:
            self.calls.append((method, metadata))
            if method == "CreateEntry":
                entry = self.classes["Entry"]()
                entry.CopyFrom(request.entry)
                entry.name = f"entries/{request.entry_id or uuid.uuid4().hex}"  # type: ignore[attr-defined]
                self.entries[entry.name] = entry  # type: ignore[attr-defined]
                return entry
            if method == "ReplaceEntry":
                self.entries[request.name] = request
                return request  # type: ignore[no-any-return]
            if method == "GetEntry":
                if request.name not in self.entries:
                    context.abort(grpc.StatusCode.NOT_FOUND, f"no {request.name}")
                return self.entries[request.name]
            if method == "ListEntries":
                return self.classes["ListEntriesResponse"](entries=list(self.entries.values()))
        match = _GOOD_TOKEN.fullmatch(metadata.get("authorization", ""))
        if match is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required")
            raise AssertionError("abort raises")
        return self.classes["Caller"](
            subject=f"users/{match.group(1)}",
            authorization=metadata["authorization"],
            forwarded_for=metadata.get("x-forwarded-for", ""),
        )


@dataclass
class Backend:
    vault: Vault
    port: int
    descriptor_set: Path
    certs: Path


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    home = tmp_path_factory.mktemp("hostile")
    descriptor_set = compile_proto(home, "acme/vault/v1/vault.proto", PROTO)
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file:
        pool.Add(file)
    service = pool.FindServiceByName(SERVICE)
    names = ("Entry", "ListEntriesResponse", "Caller")
    classes = {
        n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"acme.vault.v1.{n}")) for n in names
    }
    vault = Vault(classes)

    def handler(name: str) -> Callable[[Any, grpc.ServicerContext], Message]:
        return lambda request, context: vault.handle(name, request, context)

    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            handler(method.name),
            request_deserializer=message_factory.GetMessageClass(method.input_type).FromString,
            response_serializer=lambda message: message.SerializeToString(),
        )
        for method in service.methods
    }
    certs = home / "certs"
    tls.ensure_certificates(certs, config.COMPONENTS)
    server_tls = config.TlsSettings(certs / "ca.crt", certs / "users.crt", certs / "users.key")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(server_tls))
    server.start()
    try:
        yield Backend(vault, port, descriptor_set, certs)
    finally:
        server.stop(grace=None)


@dataclass
class Edge:
    port: int
    process: Process

    def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        source: str = "127.0.0.1",
    ) -> Answer:
        """One HTTP/1.1 request from the address `source`."""
        return http_call(self.port, method, path, body, headers=headers, raw=raw, timeout=15, source=source)


def start_edge(backend: Backend, *extra: str) -> Edge:
    """``python -m gateway`` (standalone, mTLS to the backend as ``gateway``) with `extra`."""
    port = free_port()
    certs = backend.certs
    process = Process.module(
        "gateway",
        STANDALONE,
        f"--descriptor-set={backend.descriptor_set}",
        f"--backend={SERVICE}=localhost:{backend.port}",
        f"--listen=127.0.0.1:{port}",
        f"--cacert={certs / 'ca.crt'}",
        f"--cert={certs / 'gateway.crt'}",
        f"--key={certs / 'gateway.key'}",
        *extra,
    )
    try:
        process.wait_for_line(lambda line: '"serving"' in line, timeout=30)
    except AssertionError:
        process.stop()
        raise
    return Edge(port, process)


@pytest.fixture
def edges(backend: Backend) -> Iterator[Callable[..., Edge]]:
    """Starts edges with extra arguments for one test, and stops them after it."""
    started: list[Edge] = []

    def start(*extra: str) -> Edge:
        started.append(start_edge(backend, *extra))
        return started[-1]

    try:
        yield start
    finally:
        for edge in started:
            edge.process.stop()


@pytest.fixture(scope="module")
def edge(backend: Backend) -> Iterator[Edge]:
    """An edge with the default limits (JSON depth 32)."""
    started = start_edge(backend)
    try:
        yield started
    finally:
        started.process.stop()


def _detail(answer: Answer, kind: str) -> dict[str, Any]:
    return next(d for d in answer.json()["details"] if d["@type"].endswith(kind))


def _refused(answer: Answer, status: int, code: int, reason: str | None = None) -> None:
    assert answer.status == status, answer.body
    body = answer.json()
    assert body["code"] == code, body
    if reason is not None:
        assert _detail(answer, "ErrorInfo")["reason"] == reason, body


# -- finding 3: the rate limit is per client address, never per unverified token --------------


def test_junk_tokens_and_scheme_spellings_earn_no_fresh_bucket(
    backend: Backend, edges: Callable[..., Edge]
) -> None:
    edge = edges("--rate-per-second=0.01", "--rate-burst=3")
    calls_before, entries_before = backend.vault.snapshot()
    tokens = ["Bearer junk-1", "bearer junk-2", "BEARER junk-3", "Bearer junk-4", "bEaReR junk-5"]
    answers = [edge.call("GET", "/v1/whoami", headers={"Authorization": t}) for t in tokens]
    answers.append(edge.call("GET", "/v1/whoami", headers={"Authorization": "Bearer good-alice"}))
    assert [a.status for a in answers] == [401, 401, 401, 429, 429, 429], [a.body for a in answers]
    for answer in answers[3:]:
        _refused(answer, 429, 8, "RATE_LIMITED")
        assert int(answer.headers["Retry-After"]) >= 1
    calls_after, entries_after = backend.vault.snapshot()
    assert calls_after - calls_before == 3, "refused requests never reach the backend"
    assert entries_after == entries_before
    # The limit is the client's, not everyone's: another address has its own bucket.
    other = edge.call("GET", "/v1/whoami", headers={"Authorization": "bearer good-bob"}, source="127.0.0.2")
    assert other.status == 200, other.body
    assert other.json()["authorization"] == "Bearer good-bob", "the scheme reaches the backend normalised"


def test_failed_authentications_lock_the_address_out(backend: Backend, edges: Callable[..., Edge]) -> None:
    edge = edges("--auth-failures-per-address=3", "--auth-failure-window-seconds=60")
    calls_before, _ = backend.vault.snapshot()
    for index in range(3):
        answer = edge.call("GET", "/v1/whoami", headers={"Authorization": f"Bearer junk-{uuid.uuid4()}"})
        assert answer.status == 401, (index, answer.body)
    # Locked out: a fourth try, even with a good token or none, is not passed on.
    for headers in ({"Authorization": "Bearer good-alice"}, {}):
        locked = edge.call("GET", "/v1/whoami", headers=headers)
        _refused(locked, 429, 8, "AUTHENTICATION_THROTTLED")
        assert 1 <= int(locked.headers["Retry-After"]) <= 60
    assert backend.vault.snapshot()[0] - calls_before == 3
    elsewhere = edge.call(
        "GET", "/v1/whoami", headers={"Authorization": "Bearer good-alice"}, source="127.0.0.2"
    )
    assert elsewhere.status == 200, elsewhere.body


def test_x_forwarded_for_counts_only_from_a_trusted_proxy(
    backend: Backend, edges: Callable[..., Edge]
) -> None:
    edge = edges(
        "--rate-per-second=0.01",
        "--rate-burst=2",
        "--trusted-proxy=127.0.0.2/32",
    )
    good = {"Authorization": "Bearer good-alice"}
    # A direct client (127.0.0.1 is not a trusted proxy) cannot pick its address.
    calls_before, _ = backend.vault.snapshot()
    direct = [
        edge.call("GET", "/v1/whoami", headers={**good, "X-Forwarded-For": f"198.51.100.{n}"})
        for n in range(4)
    ]
    assert [a.status for a in direct] == [200, 200, 429, 429], [a.body for a in direct]
    assert direct[0].json()["forwardedFor"] == "127.0.0.1", "the spoofed list is not passed on"
    assert backend.vault.snapshot()[0] - calls_before == 2
    assert backend.vault.forwarded_for()[-2:] == ["127.0.0.1", "127.0.0.1"]
    # Behind the trusted proxy, the client is the rightmost hop that is not the proxy.
    via = {**good, "X-Forwarded-For": "6.6.6.6, 198.51.100.7"}
    proxied = [edge.call("GET", "/v1/whoami", headers=via, source="127.0.0.2") for _ in range(2)]
    assert [a.status for a in proxied] == [200, 200]
    assert proxied[0].json()["forwardedFor"] == "198.51.100.7"
    spoofed = {**good, "X-Forwarded-For": "7.7.7.7, 198.51.100.7"}  # a new left part is no new client
    _refused(edge.call("GET", "/v1/whoami", headers=spoofed, source="127.0.0.2"), 429, 8, "RATE_LIMITED")
    neighbour = {**good, "X-Forwarded-For": "198.51.100.8"}
    assert edge.call("GET", "/v1/whoami", headers=neighbour, source="127.0.0.2").status == 200


# -- finding 4: one field, two JSON names --------------------------------------------------------

TWICE = [
    ("POST", "/v1/entries", {"display_name": "a", "displayName": "b"}, "entry.display_name"),
    ("POST", "/v1/entries", {"label": {"displayName": "a", "display_name": "b"}}, "entry.label.display_name"),
    (
        "POST",
        "/v1/entries",
        {"labels": [{"displayName": "a"}, {"display_name": "a", "displayName": "b"}]},
        "entry.labels[1].display_name",
    ),
    (
        "POST",
        "/v1/entries",
        {"labelsByKey": {"k": {"display_name": "a", "displayName": "b"}}},
        "entry.labels_by_key[k].display_name",
    ),
    ("POST", "/v1/entries", {"labels_by_key": {}, "labelsByKey": {}}, "entry.labels_by_key"),
    ("POST", "/v1/entries/e1:replace", {"display_name": "a", "displayName": "b"}, "display_name"),
    (
        "POST",
        "/v1/entries/e1:replace",
        {"label": {"display_name": "a", "displayName": "b"}},
        "label.display_name",
    ),
    ("GET", "/v1/entries?page_size=1&pageSize=2", None, "page_size"),
    ("GET", "/v1/entries?label.display_name=a&label.displayName=b", None, "label.display_name"),
]
TWICE_IDS = [
    "body-field-top",
    "body-field-nested",
    "body-field-in-a-list",
    "body-field-in-a-map",
    "body-field-map-itself",
    "body-star-top",
    "body-star-nested",
    "query",
    "query-nested",
]


@pytest.mark.parametrize(("method", "path", "body", "field_path"), TWICE, ids=TWICE_IDS)
def test_one_field_given_by_two_names_is_refused(
    backend: Backend, edge: Edge, method: str, path: str, body: object, field_path: str
) -> None:
    before = backend.vault.snapshot()
    answer = edge.call(method, path, body)
    _refused(answer, 400, 3)
    violations = _detail(answer, "BadRequest")["fieldViolations"]
    assert [v["field"] for v in violations] == [field_path], violations
    assert "twice" in violations[0]["description"]
    assert backend.vault.snapshot() == before, "the backend was not called"


def test_a_body_cannot_reach_past_its_field(backend: Backend, edge: Edge) -> None:
    """``body: "entry"``: the bytes are the entry's value, never spliced into the request."""
    before = backend.vault.snapshot()
    answer = edge.call("POST", "/v1/entries", raw=b'{"displayName": "x"}, "entryId": "injected"')
    _refused(answer, 400, 3)
    assert backend.vault.snapshot() == before
    assert edge.call("GET", "/v1/entries/injected").status == 404


# -- the JSON depth limit is exact ----------------------------------------------------------------


def _nested(levels: int) -> dict[str, Any]:
    """An entry body nested exactly `levels` deep (the body's own object is level 1)."""
    value: dict[str, Any] = {}
    for _ in range(levels - 2):
        value = {"v": value}
    return {"data": value}


def _depth(value: Any) -> int:
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return 1 + max((_depth(c) for c in children if isinstance(c, dict | list)), default=0)


@pytest.mark.parametrize("path", ["/v1/entries", "/v1/entries/deep:replace"], ids=["body-field", "body-star"])
def test_the_json_depth_limit_is_the_configured_one(backend: Backend, edge: Edge, path: str) -> None:
    limit = Limits().max_json_depth
    at_limit, over = _nested(limit), _nested(limit + 1)
    assert (_depth(at_limit), _depth(over)) == (limit, limit + 1)
    assert edge.call("POST", path, at_limit).status == 200
    before = backend.vault.snapshot()
    answer = edge.call("POST", path, over)
    _refused(answer, 400, 3)
    assert f"deeper than {limit} levels" in _detail(answer, "BadRequest")["fieldViolations"][0]["description"]
    assert backend.vault.snapshot() == before


# -- finding 5: credentials never reach a log -----------------------------------------------------

_OPAQUE = "opaque" + uuid.uuid4().hex
_SIGNATURE = base64.urlsafe_b64encode(uuid.uuid4().bytes * 2).decode().rstrip("=")
_JWT = "eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIn0.eyJzdWIiOiJ1c2Vycy8xIn0." + _SIGNATURE
_HOST = b"Host: edge\r\n"
MALFORMED = {
    "cr-inside-authorization": b"GET /v1/whoami HTTP/1.1\r\n"
    + _HOST
    + f"Authorization: Bearer {_OPAQUE}\rX-Next: 1\r\n\r\n".encode(),
    "lf-inside-a-header-name": b"GET /v1/whoami HTTP/1.1\r\n"
    + _HOST
    + f"X-Bad\nAuthorization : Bearer {_JWT}\r\n\r\n".encode(),
    "nul-inside-authorization": b"GET /v1/whoami HTTP/1.1\r\n"
    + _HOST
    + f"Authorization: Bearer {_OPAQUE}\x00{_JWT}\r\n\r\n".encode(),
    "token-in-a-bad-header-line": b"GET /v1/whoami HTTP/1.1\r\n"
    + _HOST
    + f"X-Bad\x01: Bearer {_OPAQUE}\r\nCookie: session={_OPAQUE}\r\n\r\n".encode(),
    "folded-authorization": b"GET /v1/whoami HTTP/1.1\r\n"
    + _HOST
    + f"X-First: 1\r\n Authorization: Bearer {_JWT}\r\n\r\n".encode(),
    "bad-request-line": f"GET /v1/whoami?t={_OPAQUE} HTTP/1.1 Bearer {_OPAQUE}\r\n\r\n".encode(),
    "bad-method": f"G@T /v1/whoami HTTP/1.1\r\nAuthorization: Bearer {_OPAQUE}\r\n\r\n".encode(),
    "huge-header": b"GET /v1/whoami HTTP/1.1\r\n"
    + _HOST
    + f"Authorization: Bearer {_JWT}\r\nX-Huge: {_OPAQUE}".encode()
    + b"a" * 20000
    + b"\r\n\r\n",
    "invalid-chunking": b"POST /v1/entries HTTP/1.1\r\n"
    + _HOST
    + f"Authorization: Bearer {_OPAQUE}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    + f"Bearer {_OPAQUE}\r\n{{}}\r\n0\r\n\r\n".encode(),
}


def test_malformed_requests_get_400_and_leave_no_credential_in_the_logs(
    backend: Backend, edges: Callable[..., Edge]
) -> None:
    edge = edges()
    before = backend.vault.snapshot()
    statuses = {}
    for name, data in MALFORMED.items():
        answer = raw_exchange(edge.port, data)
        statuses[name] = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/1.") else answer[:40]
    assert statuses == {**dict.fromkeys(MALFORMED, b"400"), "huge-header": b"431"}, statuses
    assert backend.vault.snapshot() == before, "no malformed request reached the backend"
    # A well-formed call carrying the same credentials, refused by the backend, for good measure.
    refused = edge.call("GET", "/v1/whoami", headers={"Authorization": f"Bearer {_OPAQUE}", "Cookie": _JWT})
    assert refused.status == 401
    edge.process.stop()
    output = edge.process.output()
    lines = output.splitlines()
    for secret in (_OPAQUE, _JWT, _SIGNATURE, _JWT.split(".")[1]):
        leaking = [line for line in lines if secret in line]
        assert not leaking, f"{secret} is in the logs:\n" + "\n".join(leaking)
    assert "Traceback" not in output, output
    refusals = [json.loads(line) for line in lines if '"malformed HTTP request refused"' in line]
    assert len(refusals) == len(MALFORMED), output
    assert {r["status"] for r in refusals} == {400, 431}
    assert {r["peer"] for r in refusals} == {"127.0.0.1"}
    assert all(json.loads(line) for line in lines), "every line is one JSON object"
