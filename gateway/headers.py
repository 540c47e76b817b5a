"""HTTP headers to gRPC metadata and back, as grpc-gateway's header matchers do.

Incoming: `Authorization` becomes `authorization` (a Bearer credential's scheme, matched in any
case as RFC 7235 has it, written `Bearer`), `Grpc-Metadata-<k>` becomes `<k>` (`-bin` values
base64-decoded), `x-request-id` is the request's id (`choose_request_id`), and `x-forwarded-for`
(one address: the client, see `client_address`) and `x-forwarded-host` are added. The client's
`traceparent`/`tracestate` pass through only when asked (an edge that does not trace, and
believes the client); an edge that traces sends its own (`gateway.observe`: it continues the
client's trace, or at a public endpoint only a trusted proxy's). Nothing else is
forwarded: not hop-by-hop headers, not the client's own `X-Forwarded-For`, not reserved
`grpc-*` keys, and not keys the gateway sets itself. Outgoing:
header metadata becomes `Grpc-Metadata-<k>`, trailers `Grpc-Trailer-<k>`, with `-bin` values
base64-encoded.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import re
import uuid
from collections.abc import Callable, Iterable, Sequence

from gateway import base64text
from gateway.errors import BadRequest
from services.kit.request_id import is_valid as is_valid_request_id

__all__ = [
    "DECLARABLE_HEADERS",
    "HTTP_CODE",
    "ConflictingStatus",
    "HeaderMatcher",
    "bearer_credential",
    "chosen_status",
    "declared_headers",
    "choose_request_id",
    "Network",
    "client_address",
    "is_trusted_peer",
    "normalized_authorization",
    "METADATA_PREFIX",
    "TRAILER_PREFIX",
    "default_header_matcher",
    "forwarding_matcher",
    "outgoing_metadata",
    "request_id",
    "parse_grpc_timeout",
    "response_headers",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
"""A trusted proxy's address range."""

HeaderMatcher = Callable[[str], str | None]
"""Maps a lower-case HTTP header name to the metadata key it is forwarded as, or None to drop it."""

METADATA_PREFIX = "Grpc-Metadata-"
TRAILER_PREFIX = "Grpc-Trailer-"

_METADATA_PREFIX_LOWER = METADATA_PREFIX.lower()
_KEY = re.compile(r"[0-9a-z_.\-]+")
_ASCII_VALUE = re.compile(r"[\x20-\x7e]*")
_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# Keys a client may never set through Grpc-Metadata-: connection-level HTTP/2 headers, and the keys
# the gateway sets itself (a client-supplied copy would spoof them).
_NEVER_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "host",
        "content-length",
        "content-type",
        "user-agent",
        "authorization",
        "traceparent",
        "tracestate",
        "baggage",  # the Internet does not get to set it (as Grpc-Metadata-Baggage either)
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-host",
    }
)
_PASSED_THROUGH = ("traceparent", "tracestate")
# Response metadata the gateway never turns into HTTP headers (gRPC transport keys).
_NOT_RETURNED = frozenset({"content-type", "te", "user-agent", "content-length", "connection", "host"})
HTTP_CODE = "x-http-code"
"""The metadata key a method declaring it sets to choose its success status."""
DECLARABLE_HEADERS = frozenset(
    {
        "location",
        "set-cookie",
        "cache-control",
        "pragma",
        "expires",
        "content-disposition",
        "content-language",
        "content-security-policy",
        "referrer-policy",
        "link",
        "retry-after",
        "www-authenticate",
        HTTP_CODE,
    }
)
"""What a method may declare in ``poly.options.v1.response_headers``: headers about its own
answer. Those the edge answers for (framing, CORS, caching validators, the date, the request
id, HSTS) are never a method's to set."""
_CHOSEN_STATUSES = frozenset({200, 201, 202, 203, 300, 301, 302, 303, 307, 308, *range(400, 600)}) - {407}
"""Statuses with a body a method may pick: not 1xx, 204, 205 or 304 (no body), nor 407."""
_STATUS = re.compile(r"[0-9]{3}", re.ASCII)


def default_header_matcher(name: str) -> str | None:
    """`grpc-metadata-<k>` -> `<k>`; every other header is not forwarded."""
    if name.startswith(_METADATA_PREFIX_LOWER):
        return name[len(_METADATA_PREFIX_LOWER) :]
    return None


@functools.lru_cache(maxsize=256)
def forwarding_matcher(names: frozenset[str]) -> HeaderMatcher:
    """`default_header_matcher`, also forwarding the headers `names` (lower-case) under their
    own name: a method's declared ones (`plans.Plan.forwarded_headers`). Built once per set."""
    if not names:
        return default_header_matcher

    def matcher(name: str) -> str | None:
        return name if name in names else default_header_matcher(name)

    return matcher


def outgoing_metadata(
    headers: Iterable[tuple[str, str]],
    *,
    client_ip: str,
    host: str,
    request_id: str,
    header_matcher: HeaderMatcher = default_header_matcher,
    forward_trace_context: bool = True,
) -> list[tuple[str, str | bytes]]:
    """The gRPC metadata for a call made on behalf of an HTTP request.

    `headers` are the request's (name, value) pairs, names in any case, repeated names allowed.
    `client_ip` is the client's address as the edge determined it (`client_address`): it is the
    one ``x-forwarded-for`` entry sent, so a backend can trust the last entry it sees.
    `forward_trace_context` passes the client's ``traceparent``/``tracestate`` through; an edge
    that traces sets it False and adds its own (`gateway.observe.Observer.passes_trace_context`).
    Raises BadRequest for a metadata key that is not a valid gRPC key, a `-bin` value that is not
    base64, a text value that is not printable ASCII, or more than one Authorization header.
    """
    metadata: list[tuple[str, str | bytes]] = []
    authorization_seen = False
    for raw_name, value in headers:
        name = raw_name.lower()
        if name == "authorization":
            if authorization_seen:
                raise _bad_request(raw_name, "more than one Authorization header")
            authorization_seen = True
            metadata.append(("authorization", normalized_authorization(_ascii_value(raw_name, value))))
        elif name in _PASSED_THROUGH:
            if forward_trace_context and _ASCII_VALUE.fullmatch(value):
                metadata.append((name, value))
        elif name == "x-forwarded-for":
            continue  # replaced by the address the edge vouches for
        else:
            key = header_matcher(name)
            if key is None:
                continue
            if not _KEY.fullmatch(key):
                raise _bad_request(raw_name, "not a valid gRPC metadata key (lower-case 0-9 a-z - _ .)")
            if key.startswith("grpc-") or key in _NEVER_FORWARDED:
                continue
            metadata.append((key, _metadata_value(raw_name, key, value)))
    metadata.append(("x-request-id", request_id))
    metadata.extend(_forwarded(client_ip=client_ip, host=host))
    return metadata


def bearer_credential(value: str) -> str | None:
    """The token of an Authorization value ``Bearer <token>``, the scheme written in any case
    (RFC 7235: schemes are case-insensitive); None for any other value."""
    parts = value.split(None, 1)
    return parts[1].strip() if len(parts) == 2 and parts[0].lower() == "bearer" else None


def normalized_authorization(value: str) -> str:
    """An Authorization value with a Bearer scheme written in any case as ``Bearer <token>``;
    any other value unchanged but trimmed."""
    token = bearer_credential(value)
    return f"Bearer {token}" if token is not None else value.strip()


def client_address(peer: str, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """The client behind a request from `peer` carrying the X-Forwarded-For values `forwarded_for`.

    A peer that is not in `trusted` is the client, whatever it claims. A trusted proxy's list is
    read from the right (each proxy appends the address it got the request from), skipping the
    trusted proxies: the first address that is not one is the client. An entry that is not an
    IP address ends the walk at the hop to its right, since nothing left of it can be believed.
    """
    if not trusted or not is_trusted_peer(peer, trusted):
        return peer
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    client = peer
    for hop in reversed(hops):
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            break
        client = str(address)
        if not any(address in network for network in trusted):
            break
    return client


def is_trusted_peer(peer: str, trusted: Sequence[Network]) -> bool:
    """Whether `peer` (an IP address) is in one of the `trusted` proxy networks."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in trusted)


def request_id(headers: Iterable[tuple[str, str]]) -> str:
    """`choose_request_id` of the first X-Request-Id among `headers` (name, value) pairs."""
    for name, value in headers:
        if name.lower() == "x-request-id":
            return choose_request_id(value)
    return choose_request_id(None)


def choose_request_id(value: str | None) -> str:
    """`value` (a client's X-Request-Id) when it is 1-128 characters of ``A-Z a-z 0-9 . _ : -``,
    else a new uuid4 hex: an id that lands in log lines, span attributes and metadata is never
    one the client could shape into something else (quotes, spaces, control characters)."""
    if value is not None:
        candidate = value.strip()
        if is_valid_request_id(candidate):  # the kit's rule: every service applies the same one
            return candidate
    return uuid.uuid4().hex


def parse_grpc_timeout(value: str) -> float:
    """A `Grpc-Timeout` value (1-8 digits then one of H M S m u n) in seconds; else BadRequest."""
    match = _TIMEOUT.fullmatch(value)
    if match is None:
        raise _bad_request(
            "Grpc-Timeout", "must be 1 to 8 digits followed by a unit H, M, S, m, u or n (e.g. 200m)"
        )
    return int(match.group(1)) * _TIMEOUT_UNITS[match.group(2)]


def response_headers(
    initial: Sequence[tuple[str, str | bytes]],
    trailing: Sequence[tuple[str, str | bytes]],
    *,
    declared: frozenset[str] = frozenset(),
) -> list[tuple[str, str]]:
    """HTTP response headers for a call's header metadata and trailers (grpc-gateway's names).

    Reserved `grpc-*` keys and transport keys are dropped, `-bin` values are base64 (standard,
    padded), and a text value that could not be sent as an HTTP header is dropped. Keys the
    method `declared` (`declared_headers`) are left out: they are sent under their own name.
    """
    out: list[tuple[str, str]] = []
    for prefix, metadata in ((METADATA_PREFIX, initial), (TRAILER_PREFIX, trailing)):
        for raw_key, value in metadata:
            key = raw_key.lower()
            if key.startswith(("grpc-", ":")) or key in _NOT_RETURNED or not _KEY.fullmatch(key):
                continue
            if key in declared:
                continue
            if key.endswith("-bin"):
                raw = value if isinstance(value, bytes) else value.encode()
                out.append((prefix + key, base64.b64encode(raw).decode("ascii")))
            elif isinstance(value, str) and _ASCII_VALUE.fullmatch(value):
                out.append((prefix + key, value))
    return out


def declared_headers(
    metadata: Sequence[tuple[str, str | bytes]], declared: frozenset[str]
) -> list[tuple[str, str]]:
    """The metadata a method declared (``poly.options.v1.response_headers``) as HTTP headers
    of the same name, header metadata and trailers alike (a cookie or a redirect must be a
    header). Only `DECLARABLE_HEADERS` but ``x-http-code`` (the status) go out, and only
    values that can be a header."""
    out: list[tuple[str, str]] = []
    for raw_key, value in metadata:
        key = raw_key.lower()
        sendable = isinstance(value, str) and _ASCII_VALUE.fullmatch(value)
        if key in declared and key in DECLARABLE_HEADERS and key != HTTP_CODE and sendable:
            out.append((key, str(value)))
    return out


class ConflictingStatus(ValueError):
    """A method chose two different statuses (in its header metadata and its trailers)."""


def chosen_status(metadata: Sequence[tuple[str, str | bytes]], declared: frozenset[str], default: int) -> int:
    """The success status a method chose with ``x-http-code`` (when it declared it), one with a
    body that is not 407; else `default`. `ConflictingStatus` when it chose two."""
    if HTTP_CODE not in declared:
        return default
    chosen = {
        int(value)
        for key, value in metadata
        if key.lower() == HTTP_CODE and isinstance(value, str) and _STATUS.fullmatch(value)
    }
    if len(chosen) > 1:
        raise ConflictingStatus(f"the method chose the statuses {sorted(chosen)}")
    return next((code for code in chosen if code in _CHOSEN_STATUSES), default)


def _forwarded(*, client_ip: str, host: str) -> list[tuple[str, str | bytes]]:
    """X-Forwarded-For (the client's address only) and X-Forwarded-Host."""
    out: list[tuple[str, str | bytes]] = []
    if client_ip and _ASCII_VALUE.fullmatch(client_ip):
        out.append(("x-forwarded-for", client_ip))
    if host and _ASCII_VALUE.fullmatch(host):
        out.append(("x-forwarded-host", host))
    return out


def _metadata_value(header: str, key: str, value: str) -> str | bytes:
    if key.endswith("-bin"):
        return _decode_base64(header, value)
    return _ascii_value(header, value)


def _ascii_value(header: str, value: str) -> str:
    if not _ASCII_VALUE.fullmatch(value):
        raise _bad_request(header, "value must be printable ASCII")
    return value


def _decode_base64(header: str, value: str) -> bytes:
    """gRPC binary values: standard or URL-safe alphabet, padded or not (`base64text`)."""
    try:
        return base64text.decode(value.strip())
    except ValueError:
        raise _bad_request(header, "-bin value must be base64") from None


def _bad_request(header: str, description: str) -> BadRequest:
    return BadRequest(f"invalid header {header}: {description}", [(header, description)])
