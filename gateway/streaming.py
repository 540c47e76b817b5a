"""Framing of server-streaming responses: newline-delimited JSON or Server-Sent Events.

NDJSON is grpc-gateway's: one `{"result":<message>}` line per message and, on failure, a final
`{"error":<google.rpc.Status>}` line. SSE frames a message as `data:` lines ended by a blank line.
"""

from __future__ import annotations

import re

__all__ = [
    "NDJSON",
    "SSE",
    "ndjson_result",
    "ndjson_error",
    "sse_event",
    "wants_sse",
]

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"

_JSON_TYPES = ("application/json", NDJSON)
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_QVALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")


def ndjson_result(message_json: bytes) -> bytes:
    """One NDJSON line carrying a message: `{"result":...}\\n`."""
    return b'{"result":' + _one_line(message_json) + b"}\n"


def ndjson_error(status_json: bytes) -> bytes:
    """The final NDJSON line of a failed stream: `{"error":<Status>}\\n`."""
    return b'{"error":' + _one_line(status_json) + b"}\n"


def sse_event(message_json: bytes, *, event: str = "", id: str = "") -> bytes:
    """One Server-Sent Event: optional `event:`/`id:` lines, a `data:` line per line, a blank line.

    Raises ValueError when `event` or `id` hold a line break (or `id` a NUL), which would forge fields.
    """
    head = b""
    if event:
        head += b"event: " + _field(event, "event") + b"\n"
    if id:
        if "\0" in id:
            raise ValueError("an SSE id must not contain NUL")
        head += b"id: " + _field(id, "id") + b"\n"
    data = b"".join(b"data: " + line + b"\n" for line in _LINE_BREAK.split(message_json))
    return head + data + b"\n"


def wants_sse(accept: str) -> bool:
    """True when Accept names `text/event-stream` (q > 0) at least as preferred as JSON.

    JSON is `application/json` or `application/x-ndjson`, matched also through `application/*` and
    `*/*` (the most specific range decides, as RFC 9110 says). Wildcards alone never select SSE.
    Malformed media ranges and q-values are ignored.
    """
    ranges = _parse_accept(accept)
    sse_q = ranges.get(SSE)
    if sse_q is None or sse_q <= 0:
        return False
    json_q = max(_quality(ranges, media_type) for media_type in _JSON_TYPES)
    return sse_q >= json_q


def _parse_accept(accept: str) -> dict[str, float]:
    """{media range: q} for the well-formed ranges of an Accept header (first occurrence wins)."""
    ranges: dict[str, float] = {}
    for item in accept.split(","):
        media_range, *params = item.split(";")
        media_range = media_range.strip().lower()
        if media_range.count("/") != 1 or any(c.isspace() for c in media_range):
            continue
        q: float | None = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                value = value.strip()
                q = float(value) if _QVALUE.fullmatch(value) else None
                break
        if q is not None:
            ranges.setdefault(media_range, q)
    return ranges


def _quality(ranges: dict[str, float], media_type: str) -> float:
    kind = media_type.split("/", 1)[0]
    for candidate in (media_type, kind + "/*", "*/*"):
        if candidate in ranges:
            return ranges[candidate]
    return 0.0


def _one_line(json_bytes: bytes) -> bytes:
    # Raw line breaks in valid JSON are insignificant whitespace (inside strings they are escaped).
    if b"\n" in json_bytes or b"\r" in json_bytes:
        return _LINE_BREAK.sub(b" ", json_bytes)
    return json_bytes


def _field(value: str, name: str) -> bytes:
    if "\n" in value or "\r" in value:
        raise ValueError(f"an SSE {name} must not contain a line break")
    return value.encode("utf-8")
