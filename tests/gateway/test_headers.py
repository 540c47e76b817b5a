"""gateway.headers: HTTP headers to gRPC metadata and back."""

from __future__ import annotations

import ipaddress
import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import BadRequest
from gateway.headers import (
    Network,
    choose_request_id,
    client_address,
    forwarding_matcher,
    outgoing_metadata,
    parse_grpc_timeout,
    request_id,
    response_headers,
)


def _metadata(headers: list[tuple[str, str]]) -> list[tuple[str, str | bytes]]:
    return outgoing_metadata(headers, client_ip="10.0.0.9", host="api.example", request_id="rid")


FORWARDED = [
    ([("Authorization", "Bearer abc")], ("authorization", "Bearer abc")),
    ([("AUTHORIZATION", "Bearer abc")], ("authorization", "Bearer abc")),
    ([("Authorization", "bearer abc")], ("authorization", "Bearer abc")),
    ([("Authorization", "BEARER  abc ")], ("authorization", "Bearer abc")),
    ([("Authorization", "Basic dTpw")], ("authorization", "Basic dTpw")),
    ([("Grpc-Metadata-Tenant", "acme")], ("tenant", "acme")),
    ([("grpc-metadata-x.y_z-1", "v")], ("x.y_z-1", "v")),
    ([("Grpc-Metadata-Blob-Bin", "AAEC")], ("blob-bin", b"\x00\x01\x02")),
    ([("Grpc-Metadata-Blob-Bin", "AAECAw")], ("blob-bin", b"\x00\x01\x02\x03")),
    ([("Grpc-Metadata-Blob-Bin", "_-8=")], ("blob-bin", b"\xff\xef")),
    (
        [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")],
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ),
    ([("Tracestate", "congo=t61rcWkgMzE")], ("tracestate", "congo=t61rcWkgMzE")),
]


@pytest.mark.parametrize(
    ("headers", "expected"),
    FORWARDED,
    ids=[
        "authorization",
        "authorization-upper",
        "bearer-scheme-lower-case",
        "bearer-scheme-upper-case-extra-space",
        "other-scheme-unchanged",
        "grpc-metadata",
        "key-charset",
        "bin",
        "bin-unpadded",
        "bin-urlsafe",
        "traceparent",
        "tracestate",
    ],
)
def test_forwarded(headers: list[tuple[str, str]], expected: tuple[str, str | bytes]) -> None:
    assert expected in _metadata(headers)


DROPPED = [
    ("Grpc-Metadata-Grpc-Timeout", "1S"),
    ("Grpc-Metadata-Grpc-Status", "0"),
    ("Grpc-Metadata-Connection", "close"),
    ("Grpc-Metadata-TE", "trailers"),
    ("Grpc-Metadata-Host", "evil"),
    ("Grpc-Metadata-Content-Length", "1"),
    ("Grpc-Metadata-Content-Type", "application/grpc"),
    ("Grpc-Metadata-X-Forwarded-For", "1.2.3.4"),
    ("Grpc-Metadata-Authorization", "Bearer other"),
    ("Connection", "keep-alive"),
    ("TE", "trailers"),
    ("Host", "other.example"),
    ("Content-Type", "application/json"),
    ("Content-Length", "10"),
    ("Cookie", "a=b"),
    ("Grpc-Timeout", "1S"),
]


@pytest.mark.parametrize(("name", "value"), DROPPED, ids=[name for name, _ in DROPPED])
def test_not_forwarded(name: str, value: str) -> None:
    metadata = _metadata([(name, value)])
    assert all(v != value for _, v in metadata)
    assert {k for k, _ in metadata} == {"x-request-id", "x-forwarded-for", "x-forwarded-host"}


REFUSED = [
    ("Grpc-Metadata-", "v"),
    ("Grpc-Metadata-bad key", "v"),
    ("Grpc-Metadata-Caf\u00e9", "v"),
    ("Grpc-Metadata-a/b", "v"),
    ("Grpc-Metadata-Blob-Bin", "not base64!"),
    ("Grpc-Metadata-Blob-Bin", "A"),
    ("Grpc-Metadata-Note", "caf\u00e9"),
    ("Grpc-Metadata-Note", "a\x00b"),
]


@pytest.mark.parametrize(
    ("name", "value"),
    REFUSED,
    ids=[
        "empty-key",
        "space",
        "non-ascii-key",
        "slash",
        "bad-base64",
        "truncated-base64",
        "non-ascii-value",
        "nul",
    ],
)
def test_invalid_metadata_is_bad_request(name: str, value: str) -> None:
    with pytest.raises(BadRequest) as caught:
        _metadata([(name, value)])
    assert caught.value.violations and caught.value.violations[0][0] == name


def test_two_authorization_headers_are_refused() -> None:
    with pytest.raises(BadRequest):
        _metadata([("Authorization", "Bearer a"), ("authorization", "Bearer b")])


def test_forwarding_headers_carry_the_client_the_edge_vouches_for() -> None:
    metadata = _metadata([("X-Forwarded-For", "1.1.1.1, 2.2.2.2"), ("x-forwarded-for", "3.3.3.3")])
    assert [v for k, v in metadata if k == "x-forwarded-for"] == ["10.0.0.9"], (
        "the client's own list is dropped"
    )
    assert dict(metadata)["x-forwarded-host"] == "api.example"
    assert dict(metadata)["x-request-id"] == "rid"
    assert dict(_metadata([]))["x-forwarded-for"] == "10.0.0.9"


PROXIES = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]
CLIENTS = [
    ("203.0.113.5", ["198.51.100.1"], PROXIES, "203.0.113.5"),
    ("203.0.113.5", [], [], "203.0.113.5"),
    ("10.0.0.2", ["198.51.100.1"], PROXIES, "198.51.100.1"),
    ("10.0.0.2", ["6.6.6.6, 198.51.100.1, 10.0.0.7"], PROXIES, "198.51.100.1"),
    ("10.0.0.2", ["6.6.6.6", "198.51.100.1"], PROXIES, "198.51.100.1"),
    ("10.0.0.2", ["junk, 198.51.100.1"], PROXIES, "198.51.100.1"),
    ("10.0.0.2", ["198.51.100.1, junk"], PROXIES, "10.0.0.2"),
    ("10.0.0.2", [], PROXIES, "10.0.0.2"),
    ("10.0.0.2", ["10.1.1.1"], PROXIES, "10.1.1.1"),
    ("fd00::1", ["2001:db8::5"], PROXIES, "2001:db8::5"),
    ("not-an-ip", ["198.51.100.1"], PROXIES, "not-an-ip"),
]


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "client"),
    CLIENTS,
    ids=[
        "untrusted-peer-ignores-the-list",
        "no-trusted-proxies",
        "trusted-proxy",
        "rightmost-untrusted-hop",
        "several-headers",
        "junk-left-of-the-client",
        "junk-right-of-the-client",
        "trusted-proxy-without-a-list",
        "only-trusted-hops",
        "ipv6",
        "peer-not-an-address",
    ],
)
def test_client_address(peer: str, forwarded: list[str], trusted: list[Network], client: str) -> None:
    assert client_address(peer, forwarded, trusted) == client


def test_client_request_id_is_replaced_by_the_given_one() -> None:
    metadata = _metadata([("X-Request-Id", "client")])
    assert [v for k, v in metadata if k == "x-request-id"] == ["rid"]


def test_header_matcher_is_replaceable() -> None:
    metadata = outgoing_metadata(
        [("X-Tenant", "acme"), ("Grpc-Metadata-Other", "x")],
        client_ip="",
        host="",
        request_id="r",
        header_matcher=lambda name: "tenant" if name == "x-tenant" else None,
    )
    assert metadata == [("tenant", "acme"), ("x-request-id", "r")]


REQUEST_IDS = [
    ([("X-Request-Id", "abc-123")], "abc-123"),
    ([("x-request-id", "  spaced  ")], "spaced"),
    ([("X-Request-Id", "a" * 128)], "a" * 128),
    ([("X-Request-Id", "Req_1.2:3-4")], "Req_1.2:3-4"),
    ([("X-Request-Id", "first"), ("X-Request-Id", "second")], "first"),
]


@pytest.mark.parametrize(
    ("headers", "expected"),
    REQUEST_IDS,
    ids=["plain", "trimmed", "max-length", "every-allowed-kind", "first-of-two"],
)
def test_request_id_kept(headers: list[tuple[str, str]], expected: str) -> None:
    assert request_id(headers) == expected


@pytest.mark.parametrize(
    "value",
    ["", "a" * 129, "bad\nid", "caf\u00e9", "has space", 'quote"d', "a=b", "<script>", "x/y", "[REDACTED]"],
    ids=["empty", "long", "newline", "non-ascii", "space", "quote", "equals", "markup", "slash", "brackets"],
)
def test_request_id_replaced(value: str) -> None:
    generated = request_id([("X-Request-Id", value)])
    assert len(generated) == 32 and all(c in string.hexdigits for c in generated)
    assert request_id([]) != request_id([])


@given(st.text(max_size=200))
def test_a_chosen_request_id_is_always_a_short_token(value: str) -> None:
    chosen = choose_request_id(value)
    assert re.fullmatch(r"[A-Za-z0-9._:\-]{1,128}", chosen), chosen
    assert chosen == value.strip() or len(chosen) == 32


def test_an_edge_that_traces_drops_the_clients_trace_context() -> None:
    headers = [
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("Grpc-Metadata-Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ]
    metadata = outgoing_metadata(headers, client_ip="", host="", request_id="r", forward_trace_context=False)
    assert metadata == [("x-request-id", "r")]


TIMEOUTS = [
    ("1S", 1.0),
    ("200m", 0.2),
    ("5H", 18000.0),
    ("2M", 120.0),
    ("7u", 7e-6),
    ("9n", 9e-9),
    ("0S", 0.0),
    ("99999999m", 99999.999),
]


@pytest.mark.parametrize(("value", "seconds"), TIMEOUTS, ids=[value for value, _ in TIMEOUTS])
def test_parse_grpc_timeout(value: str, seconds: float) -> None:
    assert parse_grpc_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    ["", "S", "1", "1s ", "123456789S", "-1S", "1.5S", "1x", "\u0661S", "1SS"],
    ids=[
        "empty",
        "no-digits",
        "no-unit",
        "space",
        "nine-digits",
        "negative",
        "fraction",
        "unit",
        "arabic-digit",
        "two-units",
    ],
)
def test_parse_grpc_timeout_invalid(value: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_grpc_timeout(value)
    assert caught.value.violations[0][0] == "Grpc-Timeout"


@given(st.text(max_size=20))
def test_parse_grpc_timeout_never_fails_otherwise(value: str) -> None:
    if re.fullmatch(r"[0-9]{1,8}[HMSmun]", value):
        assert parse_grpc_timeout(value) >= 0
    else:
        with pytest.raises(BadRequest):
            parse_grpc_timeout(value)


@given(st.lists(st.tuples(st.text(max_size=30), st.text(max_size=30)), max_size=6))
def test_outgoing_metadata_only_raises_bad_request(headers: list[tuple[str, str]]) -> None:
    try:
        metadata = outgoing_metadata(headers, client_ip="1.2.3.4", host="h", request_id="r")
    except BadRequest:
        return
    for key, value in metadata:
        assert key == key.lower() and not key.startswith("grpc-")
        assert isinstance(value, bytes) == key.endswith("-bin")


def test_response_headers() -> None:
    initial = [
        ("x-custom", "a"),
        ("blob-bin", b"\x00\xff"),
        ("grpc-status", "0"),
        ("content-type", "application/grpc"),
    ]
    trailing = [
        ("grpc-message", "boom"),
        ("grpc-status-details-bin", b"\x01"),
        ("x-done", "yes"),
        ("bad", "a\r\nX: y"),
    ]
    assert response_headers(initial, trailing) == [
        ("Grpc-Metadata-x-custom", "a"),
        ("Grpc-Metadata-blob-bin", "AP8="),
        ("Grpc-Trailer-x-done", "yes"),
    ]


def test_clients_cannot_set_baggage_for_the_services() -> None:
    sent = dict(_metadata([("baggage", "role=admin"), ("Grpc-Metadata-Baggage", "userId=root")]))
    assert "baggage" not in sent


def test_a_method_forwards_the_headers_it_declares_under_their_own_name_and_no_others() -> None:
    declared = frozenset({"stripe-signature", "host", "x-request-id", "x-forwarded-for", "grpc-timeout"})
    sent = [
        ("Stripe-Signature", "t=1,v1=abc"),
        ("Host", "evil.example"),
        ("X-Request-Id", "spoofed"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("Grpc-Timeout", "1S"),
        ("PayPal-Transmission-Sig", "not declared"),
        ("Grpc-Metadata-Tenant", "acme"),
    ]
    metadata = outgoing_metadata(
        sent,
        client_ip="10.0.0.9",
        host="api.example",
        request_id="rid",
        header_matcher=forwarding_matcher(declared),
    )
    assert ("stripe-signature", "t=1,v1=abc") in metadata
    assert ("tenant", "acme") in metadata, "Grpc-Metadata- still works beside them"
    keys = [key for key, _ in metadata]
    assert "paypal-transmission-sig" not in keys
    assert "host" not in keys and "grpc-timeout" not in keys, "the edge's own keys are never forwarded"
    assert dict(metadata)["x-request-id"] == "rid" and dict(metadata)["x-forwarded-for"] == "10.0.0.9"


def test_no_declared_headers_is_the_default_matcher() -> None:
    assert forwarding_matcher(frozenset())("stripe-signature") is None
