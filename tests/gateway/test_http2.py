"""gateway.http2 and gateway.tls: the edge's server over HTTP/2 (prior knowledge, Upgrade: h2c,
TLS with ALPN) and HTTPS with certificates that rotate, driven over real sockets by `h2`'s
client side, raw frames and curl (a third-party client built on nghttp2)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from typing import Any

import h2.errors
import h2.events
import pytest
from hyperframe.frame import DataFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame

from gateway.wire import BodyTooLarge, Request, Response, Stream
from tests.support.h2client import PREFACE, H2Answer, H2Client, goaways, h2_call
from tests.support.http import raw_exchange
from tests.support.http_server import curl, serve, serving, sleeping


async def _echo(request: Request) -> Response:
    try:
        body = await request.read()
    except BodyTooLarge:
        return Response(413, b"{}")
    document = {
        "method": request.method,
        "path": request.raw_path,
        "version": list(request.version),
        "host": request.host,
        "scheme": request.scheme,
        "length": len(body),
    }
    return Response(200, json.dumps(document).encode())


# -- reaching HTTP/2 -----------------------------------------------------------------------


def test_prior_knowledge_serves_http2_with_the_authority_as_host() -> None:
    answer = serve(_echo, lambda port: h2_call(port, "GET", "/v1/things?a=1"))
    assert answer.status == 200
    document = json.loads(answer.body)
    assert document == {
        "method": "GET",
        "path": "/v1/things?a=1",
        "version": [2, 0],
        "host": "edge",
        "scheme": "http",
        "length": 0,
    }
    assert answer.header("content-length") == str(len(answer.body))
    assert answer.header("date"), "an origin server with a clock sends Date (RFC 9110 §6.6.1)"


def test_a_body_arrives_over_http2() -> None:
    answer = serve(_echo, lambda port: h2_call(port, "POST", "/p", body=b"x" * 1000))
    assert answer.status == 200 and json.loads(answer.body)["length"] == 1000


def test_curl_upgrades_to_h2c_and_speaks_prior_knowledge() -> None:
    def call(port: int) -> tuple[str, str]:
        upgraded = curl("--http2", "-i", f"http://127.0.0.1:{port}/up")
        prior = curl("--http2-prior-knowledge", "-i", f"http://127.0.0.1:{port}/prior")
        return upgraded.stdout, prior.stdout

    upgraded, prior = serve(_echo, call)
    assert upgraded.startswith("HTTP/1.1 101 Switching Protocols")
    assert "HTTP/2 200" in upgraded and '"version": [2, 0]' in upgraded and '"path": "/up"' in upgraded
    assert prior.startswith("HTTP/2 200") and '"path": "/prior"' in prior


def test_an_upgrade_with_malformed_settings_is_refused() -> None:
    data = (
        b"GET / HTTP/1.1\r\nHost: e\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: !!!not-base64!!!\r\n\r\n"
    )
    answer = serve(_echo, lambda port: raw_exchange(port, data))
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"101" not in answer.split(b"\r\n", 1)[0]


# -- many streams on one connection ----------------------------------------------------------


def test_streams_on_one_connection_are_answered_concurrently() -> None:
    count = 20
    arrived = 0
    all_here = asyncio.Event()

    async def handler(request: Request) -> Response:
        nonlocal arrived
        arrived += 1
        if arrived == count:
            all_here.set()
        # Each waits for all: answered one at a time, none would ever be answered.
        await asyncio.wait_for(all_here.wait(), timeout=10)
        return Response(200, request.raw_path.encode())

    def call(port: int) -> list[bytes]:
        with H2Client(port) as client:
            streams = [client.request("GET", f"/{i}") for i in range(count)]
            client.read(until=streams)
            return [client.answers[s].body for s in streams]

    assert serve(handler, call) == [f"/{i}".encode() for i in range(count)]


def test_a_large_answer_respects_a_small_client_window() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB

    async def handler(request: Request) -> Response:
        return Response(200, body, content_type="application/octet-stream")

    def call(port: int) -> bytes:
        with H2Client(port, window=1024) as client:
            stream = client.request("GET", "/big")
            client.read(until=[stream])
            return client.answers[stream].body

    assert serve(handler, call) == body


def test_a_stream_answer_arrives_piece_by_piece_and_head_gets_no_body() -> None:
    async def handler(request: Request) -> Stream:
        stream = Stream(content_type="text/event-stream")
        await stream.prepare(request)
        for index in range(3):
            await stream.write(b"data: %d\n\n" % index)
        await stream.write_eof()
        return stream

    def call(port: int) -> tuple[Any, Any]:
        with H2Client(port) as client:
            get = client.request("GET", "/watch")
            head = client.request("HEAD", "/watch")
            client.read(until=[get, head])
            return client.answers[get], client.answers[head]

    get, head = serve(handler, call)
    assert get.status == 200 and get.body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert get.header("content-type") == "text/event-stream"
    assert head.status == 200 and head.body == b"" and head.header("content-type") == "text/event-stream"


def test_trailers_go_out_as_a_trailing_headers_frame() -> None:
    async def handler(request: Request) -> Response:
        return Response(200, b"{}", trailers=[("Grpc-Trailer-Checksum", "abc")])

    answer = serve(handler, lambda port: h2_call(port, "GET", "/t", headers=[("te", "trailers")]))
    assert answer.body == b"{}" and answer.trailers == [("grpc-trailer-checksum", "abc")]


@pytest.mark.parametrize("value", ["a\r\nset-cookie: x=1", "a\nb", "a\x00b"], ids=["crlf", "lf", "nul"])
def test_a_header_with_a_line_break_is_never_sent(value: str) -> None:
    async def handler(request: Request) -> Response:
        response = Response(200, b"{}")
        response.headers["X-Echo"] = value
        return response

    answer = serve(handler, lambda port: h2_call(port, "GET", "/"))
    assert answer.status == 500 and answer.header("x-echo") is None and answer.header("set-cookie") is None


# -- limits and attacks -----------------------------------------------------------------------


def test_a_body_over_the_limit_gets_413_and_the_stream_is_stopped() -> None:
    def call(port: int) -> Any:
        with H2Client(port) as client:
            stream = client.request("POST", "/p", body=b"x" * 5000, end=False)
            client.read(until=[stream])
            return client.answers[stream]

    answer = serve(_echo, call)
    assert answer.status == 413
    assert answer.reset == h2.errors.ErrorCodes.NO_ERROR, "the client is told to stop sending"


def test_a_declared_length_over_the_limit_gets_413_before_the_body() -> None:
    def call(port: int) -> int:
        with H2Client(port) as client:
            stream = client.request("POST", "/p", headers=[("content-length", "999999")], end=False)
            client.read(until=[stream])
            return client.answers[stream].status

    assert serve(_echo, call) == 413


def test_too_many_header_fields_get_431() -> None:
    fields = [(f"x-field-{i}", "v") for i in range(120)]
    answer = serve(_echo, lambda port: h2_call(port, "GET", "/", headers=fields))
    assert answer.status == 431


def test_a_header_list_over_the_limit_ends_the_connection() -> None:
    def call(port: int) -> Any:
        with H2Client(port) as client:
            client.request("GET", "/", headers=[("x-big", "v" * 20_000)])
            client.read(deadline=10)
            return client.goaway

    goaway = serve(_echo, call, max_head_bytes=16 * 1024)
    assert goaway is not None and goaway.error_code != h2.errors.ErrorCodes.NO_ERROR


def test_rapid_reset_ends_the_connection() -> None:
    """CVE-2023-44487: streams opened and reset at once cost the server a task each."""
    started = 0

    async def handler(request: Request) -> Response:
        nonlocal started
        started += 1
        await asyncio.sleep(30)
        return Response(200, b"{}")

    def call(port: int) -> Any:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            frames = [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", SettingsFrame(0).serialize()]
            # A HEADERS block for GET / (HPACK static-table entries, no dynamic state).
            block = bytes([0x82, 0x84, 0x86, 0x41, 0x04]) + b"edge"
            for stream_id in range(1, 1000, 2):
                headers = HeadersFrame(stream_id, block)
                headers.flags.add("END_HEADERS")
                headers.flags.add("END_STREAM")
                frames += [headers.serialize(), RstStreamFrame(stream_id, error_code=8).serialize()]
            with contextlib.suppress(OSError):
                connection.sendall(b"".join(frames))
            received = b""
            with contextlib.suppress(OSError):
                while chunk := connection.recv(65536):
                    received += chunk
            return received

    received = serve(handler, call)
    [(last_stream, code)] = goaways(received)
    assert code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert last_stream < 400, "the server stopped taking streams long before the client's 500th"
    assert started <= (last_stream + 1) // 2


def test_garbage_after_the_preface_ends_the_connection_with_a_protocol_error() -> None:
    refused: list[tuple[int, str]] = []

    def call(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x04\x09\x00\x00\x00\x00\x00junk"
            )
            received = b""
            with contextlib.suppress(OSError):
                while chunk := connection.recv(65536):
                    received += chunk
            return received

    received = serve(_echo, call, on_refused=lambda peer, status, problem: refused.append((status, problem)))
    assert (1).to_bytes(4, "big") in received[-8:], "GOAWAY PROTOCOL_ERROR"
    assert refused and refused[0][0] == 400 and "junk" not in refused[0][1]


def test_a_reset_stream_cancels_its_handler() -> None:
    entered, cancelled = threading.Event(), asyncio.Event()
    handler = sleeping(entered, cancelled)

    def reset(port: int) -> None:
        with H2Client(port) as client:
            stream = client.request("GET", "/slow")
            assert entered.wait(10), "the handler never started"
            client.h2.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
            client.flush()

    async def run() -> bool:
        async with serving(handler) as server:
            await asyncio.to_thread(reset, server.port)
            await asyncio.wait_for(cancelled.wait(), 10)
            return cancelled.is_set()

    assert asyncio.run(run())


def test_a_request_body_that_never_ends_gets_408() -> None:
    def call(port: int) -> int:
        with H2Client(port) as client:
            stream = client.request("POST", "/p", body=b"x", end=False)
            client.read(until=[stream], deadline=10)
            return client.answers[stream].status

    assert serve(_echo, call, read_timeout_seconds=0.3) == 408


def test_an_idle_connection_is_closed_with_goaway() -> None:
    def call(port: int) -> Any:
        with H2Client(port) as client:
            client.read(deadline=10)  # nothing asked: returns once the server closes
            return client.goaway, client.closed

    goaway, closed = serve(_echo, call, keepalive_seconds=0.3)
    assert closed and goaway is not None and goaway.error_code == h2.errors.ErrorCodes.NO_ERROR


def test_unknown_frames_and_settings_are_tolerated() -> None:
    """An extension frame type (RFC 9113 §5.5) is ignored, not an error."""

    def call(port: int) -> int:
        with H2Client(port) as client:
            client.socket.sendall(b"\x00\x00\x03\xfa\x00\x00\x00\x00\x00abc")
            stream = client.request("GET", "/after-unknown")
            client.read(until=[stream])
            return client.answers[stream].status

    assert serve(_echo, call) == 200


def test_an_upgrade_with_a_body_reads_the_body_then_answers_over_http2() -> None:
    def call(port: int) -> tuple[str, str]:
        posted = curl("--http2", "-i", "--json", '{"a": 1}', f"http://127.0.0.1:{port}/post")
        big = curl("--http2", "-i", "--data-binary", "x" * 5000, f"http://127.0.0.1:{port}/big")
        return posted.stdout, big.stdout

    posted, big = serve(_echo, call)
    assert posted.startswith("HTTP/1.1 101") and "HTTP/2 200" in posted
    assert '"length": 8' in posted and '"method": "POST"' in posted
    assert big.startswith("HTTP/1.1 413"), "a body over the limit is refused before any upgrade"


def test_an_upgrade_body_that_never_arrives_gets_408() -> None:
    data = (
        b"POST / HTTP/1.1\r\nHost: e\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: 10\r\n\r\nabc"
    )
    answer = serve(_echo, lambda port: raw_exchange(port, data), read_timeout_seconds=0.3)
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_a_chunked_upgrade_body_is_refused() -> None:
    data = (
        b"POST / HTTP/1.1\r\nHost: e\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    assert serve(_echo, lambda port: raw_exchange(port, data)).startswith(b"HTTP/1.1 400 ")


# -- attacks (each was tried against the edge and is refused) --------------------------------


def _frames_until_closed(port: int, frames: bytes) -> bytes:
    """Send the preface, a SETTINGS frame and `frames`; what came back until the server closed."""
    return raw_exchange(port, PREFACE + SettingsFrame(0).serialize() + frames)


@pytest.mark.parametrize(
    "frame",
    [PingFrame(0, opaque_data=b"12345678").serialize(), SettingsFrame(0).serialize()],
    ids=["ping", "settings"],
)
def test_a_flood_of_control_frames_ends_the_connection(frame: bytes) -> None:
    """CVE-2019-9512 and -9515: each costs an acknowledgement and answers nothing."""
    received = serve(_echo, lambda port: _frames_until_closed(port, frame * 3000))
    assert [code for _, code in goaways(received)] == [h2.errors.ErrorCodes.ENHANCE_YOUR_CALM]


def test_a_flood_of_empty_data_frames_ends_the_connection() -> None:
    """CVE-2019-9518: empty DATA frames on an open stream."""
    block = bytes([0x83, 0x84, 0x86, 0x41, 0x04]) + b"edge"  # POST / on http, edge
    headers = HeadersFrame(1, block)
    headers.flags.add("END_HEADERS")
    frames = headers.serialize() + DataFrame(1, b"").serialize() * 3000

    async def slow(request: Request) -> Response:
        await asyncio.sleep(30)
        return Response(200, b"{}")

    received = serve(slow, lambda port: _frames_until_closed(port, frames))
    assert [code for _, code in goaways(received)] == [h2.errors.ErrorCodes.ENHANCE_YOUR_CALM]


def test_a_protocol_error_gets_one_goaway() -> None:
    received = serve(
        _echo, lambda port: _frames_until_closed(port, b"\x00\x00\x04\x09\x00\x00\x00\x00\x00junk")
    )
    assert len([code for _, code in goaways(received)]) == 1


def test_an_answer_the_client_never_opens_a_window_for_is_dropped() -> None:
    body = b"x" * (1 << 20)

    async def handler(request: Request) -> Response:
        return Response(200, body, content_type="application/octet-stream")

    def call(port: int) -> Any:
        with H2Client(port, window=0) as client:
            stream = client.request("GET", "/big")
            client.read(until=[stream], deadline=10)
            return client.answers[stream]

    answer = serve(handler, call, read_timeout_seconds=0.5)
    assert answer.status == 200 and answer.body == b""
    assert answer.reset == h2.errors.ErrorCodes.CANCEL, "reset once the window stayed shut that long"


def test_a_client_that_reads_nothing_is_cut_off() -> None:
    body = b"x" * (32 << 20)  # more than the socket buffers on both sides hold
    cut = threading.Event()

    async def handler(request: Request) -> Response:
        return Response(200, body, content_type="application/octet-stream")

    def call(port: int) -> bool:
        with H2Client(port, window=(1 << 31) - 1) as client:
            client.h2.increment_flow_control_window(1 << 30)
            client.request("GET", "/big")
            # Reads nothing until the server gives up on it.
            assert cut.wait(10), "the server never cut the connection off"
            received = 0
            with contextlib.suppress(OSError):
                while chunk := client.socket.recv(1 << 20):
                    received += len(chunk)
            return received < len(body)

    def refused(peer: str, status: int, problem: str) -> None:
        if "read nothing" in problem:
            cut.set()

    assert serve(handler, call, read_timeout_seconds=0.5, on_refused=refused)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        (
            [(":method", "CONNECT"), (":protocol", "websocket"), (":path", "/"), (":scheme", "http")],
            "connect",
        ),
        ([(":method", "GE T"), (":path", "/"), (":scheme", "http")], "method"),
        ([(":method", "GET"), (":path", "/a b"), (":scheme", "http")], "space"),
        ([(":method", "GET"), (":path", "/a\x7fb"), (":scheme", "http")], "del"),
    ],
    ids=["extended-connect", "method-not-a-token", "space-in-path", "del-in-path"],
)
def test_malformed_pseudo_headers_never_reach_the_handler(
    fields: list[tuple[str, str]], problem: str
) -> None:
    reached: list[str] = []

    async def handler(request: Request) -> Response:
        reached.append(request.raw_path)
        return Response(200, b"{}")

    def call(port: int) -> Any:
        with H2Client(port) as client:
            client.h2.config.validate_outbound_headers = False
            client.h2.config.normalize_outbound_headers = False
            stream = client.h2.get_next_available_stream_id()
            client.h2.send_headers(stream, [*fields, (":authority", "edge")], end_stream=True)
            client.answers[stream] = H2Answer()
            client.flush()
            client.read(until=[stream])
            return client.answers[stream], client.goaway

    answer, goaway = serve(handler, call)
    assert reached == []
    assert answer.status == 400 or goaway is not None, problem


def test_userinfo_in_the_authority_is_refused() -> None:
    answer = serve(_echo, lambda port: h2_call(port, "GET", "/", authority="user:pw@edge"))
    assert answer.status == 400


def test_an_http10_upgrade_is_ignored() -> None:
    data = (
        b"GET /old HTTP/1.0\r\nHost: e\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
    )
    answer = serve(_echo, lambda port: raw_exchange(port, data))
    assert answer.startswith(b"HTTP/1.1 200 ") and b"101" not in answer.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("settings", ["!!!!", "AAMA AABk", "AAMAAABkAAQAAP__==="])
def test_upgrade_settings_must_be_base64url(settings: str) -> None:
    data = (
        b"GET / HTTP/1.1\r\nHost: e\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: " + settings.encode() + b"\r\n\r\n"
    )
    assert serve(_echo, lambda port: raw_exchange(port, data)).startswith(b"HTTP/1.1 400 ")


def test_an_upgrade_that_expects_100_continue_gets_it() -> None:
    def call(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(
                b"POST / HTTP/1.1\r\nHost: e\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                b"HTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
            )
            return connection.recv(4096)

    assert serve(_echo, call).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")


def test_events_after_the_connection_ended_start_no_handler() -> None:
    """A flood ends the connection in the middle of a read: requests after it in the same read
    are not served."""
    started = 0

    async def handler(request: Request) -> Response:
        nonlocal started
        started += 1
        return Response(200, b"{}")

    block = bytes([0x82, 0x84, 0x86, 0x41, 0x04]) + b"edge"
    requests = b""
    for stream_id in range(1, 41, 2):
        headers = HeadersFrame(stream_id, block)
        headers.flags.add("END_HEADERS")
        headers.flags.add("END_STREAM")
        requests += headers.serialize()
    ping = PingFrame(0, opaque_data=b"12345678").serialize()
    received = serve(handler, lambda port: _frames_until_closed(port, ping * 1100 + requests))
    assert [code for _, code in goaways(received)] == [h2.errors.ErrorCodes.ENHANCE_YOUR_CALM]
    assert started == 0


def test_a_refused_request_still_sending_is_told_to_stop() -> None:
    fields = [(f"x-field-{i}", "v") for i in range(120)]

    def call(port: int) -> Any:
        with H2Client(port) as client:
            stream = client.request("POST", "/", headers=fields, body=b"x", end=False)
            client.read(until=[stream])
            return client.answers[stream]

    answer = serve(_echo, call)
    assert answer.status == 431 and answer.reset == h2.errors.ErrorCodes.NO_ERROR


def test_the_keep_alive_clock_starts_again_when_the_last_stream_is_reset() -> None:
    entered = threading.Event()

    async def handler(request: Request) -> Response:
        entered.set()
        await asyncio.sleep(30)
        return Response(200, b"{}")

    def call(port: int) -> float:
        with H2Client(port) as client:
            stream = client.request("GET", "/slow")
            assert entered.wait(10)
            threading.Event().wait(0.4)  # longer than the keep-alive, spent busy
            client.h2.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
            client.flush()
            reset_at = time.monotonic()
            client.read(deadline=10)
            return time.monotonic() - reset_at

    idle = serve(handler, call, keepalive_seconds=0.3)
    assert idle >= 0.25, "the idle time is counted from the reset, not from before the stream"
