"""gateway.streaming: NDJSON and Server-Sent Events framing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.streaming import ndjson_error, ndjson_result, sse_event, wants_sse


def test_ndjson_is_grpc_gateway_framing() -> None:
    assert ndjson_result(b'{"name":"orders/1"}') == b'{"result":{"name":"orders/1"}}\n'
    assert ndjson_error(b'{"code":5,"message":"x","details":[]}') == (
        b'{"error":{"code":5,"message":"x","details":[]}}\n'
    )


def test_ndjson_keeps_one_line_per_message() -> None:
    line = ndjson_result(b'{\n  "a": "x\\ny"\r\n}')
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert json.loads(line) == {"result": {"a": "x\ny"}}


SSE = [
    (b'{"a":1}', {}, b'data: {"a":1}\n\n'),
    (b'{"a":1}', {"event": "error"}, b'event: error\ndata: {"a":1}\n\n'),
    (b'{"a":1}', {"event": "message", "id": "7"}, b'event: message\nid: 7\ndata: {"a":1}\n\n'),
    (b"{\n1\r\n2\r}", {}, b"data: {\ndata: 1\ndata: 2\ndata: }\n\n"),
    (b"", {}, b"data: \n\n"),
]


@pytest.mark.parametrize(
    ("message", "options", "expected"), SSE, ids=["data", "event", "event-id", "multi-line", "empty"]
)
def test_sse_event(message: bytes, options: dict[str, str], expected: bytes) -> None:
    assert sse_event(message, **options) == expected


@pytest.mark.parametrize(
    "options", [{"event": "a\nb"}, {"id": "1\r2"}, {"id": "a\0"}], ids=["event-lf", "id-cr", "id-nul"]
)
def test_sse_refuses_forged_fields(options: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="SSE"):
        sse_event(b"{}", **options)


def _parse_sse(stream: bytes) -> list[str]:
    """A minimal SSE parser (WHATWG rules for data lines) to round-trip events."""
    events, data = [], []
    for line in stream.decode().split("\n"):
        if line == "":
            if data:
                events.append("\n".join(data))
            data = []
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
    return events


@given(st.text())
def test_sse_round_trips(text: str) -> None:
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    assert _parse_sse(sse_event(text.encode())) == [normalised]


ACCEPT = [
    ("text/event-stream", True),
    ("TEXT/Event-Stream", True),
    ("text/event-stream;q=0.5", True),
    ("application/json, text/event-stream", True),
    ("text/event-stream, application/json", True),
    ("text/event-stream;q=0.8, application/json;q=0.8", True),
    ("text/event-stream;q=0.9, application/json", False),
    ("application/x-ndjson, text/event-stream;q=0.5", False),
    ("text/event-stream;q=0.5, */*;q=0.1", True),
    ("text/event-stream;q=0.5, */*", False),
    ("text/event-stream;q=0.5, application/*;q=0.9", False),
    ("text/event-stream;q=0", False),
    ("text/event-stream;q=0.000", False),
    ("*/*", False),
    ("text/*", False),
    ("application/json", False),
    ("", False),
    ("text/event-stream;q=2", False),
    ("text/event-stream;q=abc, application/json", False),
    ("text/event-stream ; charset=utf-8 ; q=1.0", True),
    (",,;;,garbage", False),
]


@pytest.mark.parametrize(("accept", "expected"), ACCEPT, ids=[a or "empty" for a, _ in ACCEPT])
def test_wants_sse(accept: str, expected: bool) -> None:
    assert wants_sse(accept) is expected


@given(st.text())
def test_wants_sse_never_raises(accept: str) -> None:
    assert isinstance(wants_sse(accept), bool)
