"""gateway.http1: the edge's HTTP/1.1 connections, driven over real sockets by raw bytes and h11."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import threading
import time

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.httpserver import Server
from gateway.wire import BodyTooLarge, Request, Response, Stream
from tests.support.http import raw_exchange
from tests.support.http_server import serve, serving, sleeping


def _answers(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The answers in `data`, parsed by h11 (an independent HTTP/1.1 implementation)."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    client.receive_data(b"")
    found: list[tuple[int, dict[str, str], bytes]] = []
    status, headers, body = 0, {}, b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Response):
            status = event.status_code
            headers = {k.decode().lower(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            found.append((status, headers, body))
            status, headers, body = 0, {}, b""
            if client.our_state is h11.MUST_CLOSE or client.their_state is h11.MUST_CLOSE:
                break
            client.start_next_cycle()
            client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
            client.send(h11.EndOfMessage())
        elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
            break
    return found


async def _echo(request: Request) -> Response:
    body = await request.read()
    document = {
        "method": request.method,
        "path": request.raw_path,
        "body": body.decode(),
        "host": request.host,
    }
    return Response(200, json.dumps(document).encode())


# -- keep-alive, pipelining, versions --------------------------------------------------------


def test_pipelined_requests_are_answered_one_at_a_time_in_order() -> None:
    running: list[int] = []
    most = 0

    async def handler(request: Request) -> Response:
        nonlocal most
        running.append(1)
        most = max(most, len(running))
        await asyncio.sleep(0.01)
        running.pop()
        return await _echo(request)

    data = (
        b"".join(b"POST /%d HTTP/1.1\r\nHost: edge\r\nContent-Length: 1\r\n\r\n%d" % (n, n) for n in range(5))
        + b"GET /last HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n"
    )
    answers = _answers(serve(handler, lambda port: raw_exchange(port, data)))
    assert [json.loads(body)["path"] for _, _, body in answers] == ["/0", "/1", "/2", "/3", "/4", "/last"]
    assert [json.loads(body)["body"] for _, _, body in answers[:5]] == ["0", "1", "2", "3", "4"]
    assert most == 1, "one handler at a time per connection"
    assert answers[-1][1]["connection"] == "close"


@pytest.mark.parametrize(
    ("request_head", "kept"),
    [
        (b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
    ],
    ids=["http11", "http11-close", "http10", "http10-keep-alive"],
)
def test_keep_alive_follows_the_version_and_connection_header(request_head: bytes, kept: bool) -> None:
    def call(port: int) -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(request_head)
            first = sock.recv(65536)
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                sock.sendall(b"GET /again HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")
            rest = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    rest += chunk
            return first, rest

    first, rest = serve(_echo, call)
    assert first.startswith(b"HTTP/1.1 200 ")
    assert (b"/again" in rest) is kept
    if request_head.startswith(b"GET / HTTP/1.0") and kept:
        assert b"\r\nConnection: keep-alive\r\n" in first


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ],
    ids=["no-host", "two-hosts"],
)
def test_an_http11_request_needs_exactly_one_host(data: bytes) -> None:
    seen: list[str] = []

    async def handler(request: Request) -> Response:
        seen.append(request.raw_path)
        return Response(200, b"{}")

    answer = serve(handler, lambda port: raw_exchange(port, data))
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert seen == []


# -- what a parser must refuse ----------------------------------------------------------------

SMUGGLING = {
    "content-length-and-chunked": b"POST / HTTP/1.1\r\nHost: e\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: e\r\n\r\n",
    "two-content-lengths": b"POST / HTTP/1.1\r\nHost: e\r\nContent-Length: 4\r\n"
    b"Content-Length: 40\r\n\r\nabcd",
    "chunked-not-last": b"POST / HTTP/1.1\r\nHost: e\r\n"
    b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "space-before-colon": b"POST / HTTP/1.1\r\nHost: e\r\nContent-Length : 4\r\n\r\nabcd",
    "negative-length": b"POST / HTTP/1.1\r\nHost: e\r\nContent-Length: -1\r\n\r\n",
    "bare-lf-in-chunk": b"POST / HTTP/1.1\r\nHost: e\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n4\nabcd\r\n0\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: e\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n",
    "nul-in-target": b"GET /a\x00b HTTP/1.1\r\nHost: e\r\n\r\n",
}


@pytest.mark.parametrize("data", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_ambiguous_framing_is_refused_and_the_connection_closed(data: bytes) -> None:
    seen: list[str] = []
    refusals: list[tuple[str, int, str]] = []

    async def handler(request: Request) -> Response:
        seen.append(request.raw_path)
        return await _echo(request)

    answer = serve(handler, lambda port: raw_exchange(port, data), on_refused=lambda *r: refusals.append(r))
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:60]
    assert answer.count(b"HTTP/1.1 ") == 1, "nothing after the refusal is answered"
    assert b"/smuggled" not in answer and "/smuggled" not in seen
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["code"] == 3
    assert [(peer, status) for peer, status, _ in refusals] == [("127.0.0.1", 400)]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: e\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: e\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: e\r\n" + b"".join(b"X-%d: 1\r\n" % n for n in range(20)) + b"\r\n", 431),
    ],
    ids=["long-target", "long-header", "many-headers"],
)
def test_a_head_over_the_limits_gets_431(data: bytes, status: int) -> None:
    answer = serve(_echo, lambda port: raw_exchange(port, data), max_head_bytes=2048, max_headers=10)
    assert answer.startswith(b"HTTP/1.1 %d " % status)
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["code"] == 8


async def _limited(request: Request) -> Response:
    try:
        body = await request.read()
    except BodyTooLarge:
        return Response(413, b'{"too":"large"}')
    return Response(200, b'{"length":%d}' % len(body))


@pytest.mark.parametrize(
    "data",
    [
        b"POST / HTTP/1.1\r\nHost: e\r\nContent-Length: 2000\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"100\r\n" + b"a" * 256 + b"\r\n" for _ in range(8))
        + b"0\r\n\r\n",
    ],
    ids=["declared", "chunked"],
)
def test_a_body_over_the_limit_is_refused_and_not_kept(data: bytes) -> None:
    answer = serve(_limited, lambda port: raw_exchange(port, data))
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"Connection: close" in answer, "the rest of the body is never read"


def test_a_body_within_the_limit_arrives_whole_across_chunks() -> None:
    data = b"POST / HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    data += b"".join(b"10\r\n" + b"b" * 16 + b"\r\n" for _ in range(64)) + b"0\r\n\r\n"
    answer = serve(_limited, lambda port: raw_exchange(port, data))
    assert answer.endswith(b'{"length":1024}')


# -- slow and departing clients ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "rest"),
    [
        (b"GET / HTTP/1.1\r\nHost: e\r\n", b"\r\n"),
        (b"POST / HTTP/1.1\r\nHost: e\r\nContent-Length: 4\r\n\r\nab", b"cd"),
    ],
    ids=["slow-head", "slow-body"],
)
def test_a_request_that_trickles_in_gets_408(data: bytes, rest: bytes) -> None:
    refusals: list[tuple[str, int, str]] = []
    started = time.monotonic()
    answer = serve(
        _echo,
        lambda port: raw_exchange(port, data, pause=1.0, rest=rest),
        read_timeout_seconds=0.3,
        on_refused=lambda *r: refusals.append(r),
    )
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert answer.count(b"HTTP/1.1 ") == 1
    assert [status for _, status, _ in refusals] == [408]
    assert time.monotonic() - started < 5


def test_an_idle_connection_is_closed_after_the_keep_alive_period() -> None:
    def call(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: e\r\n\r\n")
            received = b""
            while chunk := sock.recv(65536):  # ends when the server closes
                received += chunk
            return received

    answer = serve(_echo, call, keepalive_seconds=0.2)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1 ") == 1


def test_a_client_that_leaves_cancels_its_handler() -> None:
    entered, cancelled = asyncio.Event(), asyncio.Event()
    handler = sleeping(entered, cancelled)

    async def run() -> None:
        async with serving(handler) as server:
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: e\r\n\r\n")
            await asyncio.wait_for(entered.wait(), 5)
            writer.close()
            await asyncio.wait_for(cancelled.wait(), 5)

    asyncio.run(run())


def test_100_continue_is_sent_before_the_body_is() -> None:
    async def handler(request: Request) -> Response:
        await request.send_continue()
        return await _echo(request)

    def call(port: int) -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: e\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
            interim = sock.recv(65536)
            sock.sendall(b"hi")
            return interim, sock.recv(65536)

    interim, final = serve(handler, call)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert json.loads(final.partition(b"\r\n\r\n")[2])["body"] == "hi"


# -- answers ----------------------------------------------------------------------------------


def test_head_gets_the_length_and_no_body_and_204_gets_neither() -> None:
    async def handler(request: Request) -> Response:
        return Response(204 if request.raw_path == "/none" else 200, b'{"a":1}')

    data = b"HEAD / HTTP/1.1\r\nHost: e\r\n\r\nGET /none HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n"
    answer = serve(handler, lambda port: raw_exchange(port, data))
    head, rest = answer.split(b"\r\n\r\n", 1)
    assert b"Content-Length: 7" in head
    assert rest.startswith(b"HTTP/1.1 204 "), "no body bytes after HEAD's head"
    assert b"Content-Length" not in rest and rest.endswith(b"\r\n\r\n")


def test_an_upgrade_other_than_h2c_is_ignored_and_the_connection_closed_after_the_answer() -> None:
    data = (
        b"GET / HTTP/1.1\r\nHost: e\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\x81\x85junk"
    )
    answer = serve(_echo, lambda port: raw_exchange(port, data))
    assert answer.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in answer
    assert answer.count(b"HTTP/1.1 ") == 1


@pytest.mark.parametrize("value", ["a\r\nSet-Cookie: x=1", "a\nb", "a\x00b"], ids=["crlf", "lf", "nul"])
def test_a_header_that_would_split_the_answer_is_never_written(value: str) -> None:
    async def handler(request: Request) -> Response:
        response = Response(200, b"{}")
        response.headers["X-Echo"] = value
        return response

    answer = serve(handler, lambda port: raw_exchange(port, b"GET / HTTP/1.1\r\nHost: e\r\n\r\n"))
    assert answer.startswith(b"HTTP/1.1 500 ")
    assert b"Set-Cookie" not in answer and b"X-Echo" not in answer


@pytest.mark.parametrize(("version", "chunked"), [("1.1", True), ("1.0", False)])
def test_a_stream_is_chunked_over_http11_and_ends_with_the_connection_over_http10(
    version: str, chunked: bool
) -> None:
    async def handler(request: Request) -> Stream:
        stream = Stream(200, content_type="application/x-ndjson")
        await stream.prepare(request)
        for n in range(3):
            await stream.write(b'{"n":%d}\n' % n)
        await stream.write_eof()
        return stream

    data = f"GET / HTTP/{version}\r\nHost: e\r\nConnection: close\r\n\r\n".encode()
    answer = serve(handler, lambda port: raw_exchange(port, data))
    head, body = answer.split(b"\r\n\r\n", 1)
    assert (b"Transfer-Encoding: chunked" in head) is chunked
    if chunked:
        [(status, _, whole)] = _answers(answer)
        assert status == 200 and whole == b'{"n":0}\n{"n":1}\n{"n":2}\n'
    else:
        assert body == b'{"n":0}\n{"n":1}\n{"n":2}\n'


def test_the_query_keeps_order_repeats_and_blanks() -> None:
    found: list[list[tuple[str, str]]] = []

    async def handler(request: Request) -> Response:
        found.append(list(request.query.items()))
        return Response(200, b"{}")

    target = "/p?a=1&a=2&b=&c=x+y&d=%7E%zz&e"
    serve(
        handler,
        lambda port: raw_exchange(
            port, f"GET {target} HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n".encode()
        ),
    )
    assert found == [[("a", "1"), ("a", "2"), ("b", ""), ("c", "x y"), ("d", "~%zz"), ("e", "")]]


# -- shutting down ----------------------------------------------------------------------------


def test_shutdown_lets_a_request_in_flight_finish_and_closes_idle_connections() -> None:
    entered = asyncio.Event()

    async def handler(request: Request) -> Response:
        entered.set()
        await asyncio.sleep(0.3)
        return Response(200, b'{"done":true}')

    async def run() -> tuple[bytes, bytes]:
        server = Server(handler, max_body_bytes=1024)
        await server.start("127.0.0.1", 0)
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", server.port)
        busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", server.port)
        busy_writer.write(b"GET / HTTP/1.1\r\nHost: e\r\n\r\n")
        await asyncio.wait_for(entered.wait(), 5)
        await server.shutdown(5.0)
        answer = await asyncio.wait_for(busy_reader.read(), 5)
        idle = await asyncio.wait_for(idle_reader.read(), 5)
        for writer in (idle_writer, busy_writer):
            writer.close()
        return answer, idle

    answer, idle = asyncio.run(run())
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"done":true}')
    assert b"Connection: close" in answer
    assert idle == b"", "an idle connection is closed at once"


def test_shutdown_cancels_what_outlasts_the_grace_period() -> None:
    cancelled = asyncio.Event()
    handler = sleeping(asyncio.Event(), cancelled)

    async def run() -> float:
        server = Server(handler, max_body_bytes=1024)
        await server.start("127.0.0.1", 0)
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: e\r\n\r\n")
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await server.shutdown(0.2)
        await asyncio.wait_for(cancelled.wait(), 5)
        writer.close()
        return time.monotonic() - started

    assert asyncio.run(run()) < 5


# -- anything at all --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.binary(max_size=300),
        st.lists(
            st.sampled_from(
                [
                    b"GET ",
                    b"POST ",
                    b"/",
                    b"?a=1",
                    b" HTTP/1.1",
                    b" HTTP/1.0",
                    b"\r\n",
                    b"\n",
                    b"Host: e",
                    b"Content-Length: 3",
                    b"Transfer-Encoding: chunked",
                    b": ",
                    b"\x00",
                    b"abc",
                    b"0\r\n\r\n",
                ]
            ),
            max_size=25,
        ).map(b"".join),
    )
)
def test_any_bytes_get_an_answer_or_a_close_never_a_hang(data: bytes) -> None:
    answer = serve(
        _echo,
        lambda port: raw_exchange(port, data + b"\r\n\r\n", timeout=5),
        read_timeout_seconds=0.5,
        keepalive_seconds=0.5,
    )
    for line in answer.split(b"\r\n"):
        if line.startswith(b"HTTP/1.1 "):
            assert int(line.split(b" ")[1]) in {200, 400, 408, 413, 431}, answer


def test_http_client_reads_a_plain_exchange() -> None:
    def call(port: int) -> tuple[int, int, str, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("POST", "/x", body=b"hey", headers={"Content-Type": "text/plain"})
        response = connection.getresponse()
        result = port, response.status, response.getheader("Date") or "", response.read()
        connection.close()
        return result

    port, status, date, body = serve(_echo, call)
    assert status == 200 and date.endswith(" GMT")
    assert json.loads(body) == {"method": "POST", "path": "/x", "body": "hey", "host": f"127.0.0.1:{port}"}


# -- found by attacking it ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: e\r\nX-Big: ", 431),
        (b"GET / HTTP/1.1\r\nHost: e\r\nX-", 431),
        (
            b"POST / HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Trailer: ",
            413,
        ),
    ],
    ids=["header-value", "header-name", "trailer"],
)
def test_a_field_that_never_ends_is_cut_at_the_limit_not_the_timeout(head: bytes, status: int) -> None:
    started = time.monotonic()
    answer = serve(
        _limited,
        lambda port: raw_exchange(port, head, rest=b"a" * 1024, pieces=400, pause=0.005),
        max_head_bytes=4096,
        read_timeout_seconds=30,
    )
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:40]
    assert time.monotonic() - started < 20


def test_a_client_that_pipelines_without_reading_is_not_answered_ahead() -> None:
    answered = 0

    async def handler(request: Request) -> Response:
        nonlocal answered
        answered += 1
        return Response(200, b"x" * 262144)

    def call(port: int) -> tuple[int, int]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: e\r\n\r\n" * 60)
            time.sleep(1.0)
            ahead = answered
            sock.sendall(b"GET /last HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n")
            received = 0
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
            return ahead, received

    ahead, received = serve(handler, call)
    assert ahead < 30, "the server waits for the client to read before answering on"
    assert received > 61 * 262144, "every request is answered once the client reads"


def test_transfer_encoding_in_http10_ends_the_connection_after_the_message() -> None:
    data = (
        b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
        b"GET /smuggled HTTP/1.1\r\nHost: e\r\n\r\n"
    )
    answer = serve(_echo, lambda port: raw_exchange(port, data))
    assert answer.count(b"HTTP/1.1 ") == 1 and b"/smuggled" not in answer
    assert b"Connection: close" in answer


def test_an_upgrade_request_with_a_body_is_refused() -> None:
    seen: list[str] = []

    async def handler(request: Request) -> Response:
        seen.append(request.raw_path)
        return await _echo(request)

    data = (
        b"POST / HTTP/1.1\r\nHost: e\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Content-Length: 3\r\n\r\nabc"
    )
    answer = serve(handler, lambda port: raw_exchange(port, data))
    assert answer.startswith(b"HTTP/1.1 400 ") and seen == []


def test_a_stream_that_fails_after_its_head_is_cut_not_given_a_second_head() -> None:
    async def handler(request: Request) -> Stream:
        stream = Stream(200, content_type="application/x-ndjson")
        await stream.prepare(request)
        await stream.write(b'{"a":1}\n')
        raise RuntimeError("the backend went away")

    answer = serve(handler, lambda port: raw_exchange(port, b"GET / HTTP/1.1\r\nHost: e\r\n\r\n"))
    assert answer.count(b"HTTP/1.1 ") == 1
    assert answer.endswith(b'{"a":1}\n\r\n'), "no last chunk: the client can tell the stream was cut"


def test_a_pipelined_request_waiting_on_the_server_gets_no_408() -> None:
    async def handler(request: Request) -> Response:
        if request.raw_path == "/slow":
            await asyncio.sleep(1.0)
        return await _echo(request)

    first = (
        b"GET /slow HTTP/1.1\r\nHost: e\r\n\r\n"
        b"POST / HTTP/1.1\r\nHost: e\r\nConnection: close\r\nContent-Length: 10\r\n\r\nabc"
    )
    answer = serve(
        handler, lambda port: raw_exchange(port, first, pause=0.2, rest=b"defghij"), read_timeout_seconds=0.5
    )
    assert [status for status, _, _ in _answers(answer)] == [200, 200], answer


def test_an_answer_that_cannot_be_framed_gets_500() -> None:
    async def handler(request: Request) -> Response:
        return Response(200, "not bytes")  # type: ignore[arg-type]

    answer = serve(handler, lambda port: raw_exchange(port, b"GET / HTTP/1.1\r\nHost: e\r\n\r\n", timeout=5))
    assert answer.startswith(b"HTTP/1.1 500 ")


def test_a_stream_answering_head_sends_only_its_head() -> None:
    async def handler(request: Request) -> Stream:
        stream = Stream(200, content_type="application/x-ndjson")
        await stream.prepare(request)
        await stream.write(b'{"a":1}\n')
        await stream.write_eof()
        return stream

    data = b"HEAD / HTTP/1.1\r\nHost: e\r\n\r\nGET /next HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n"
    answer = serve(handler, lambda port: raw_exchange(port, data))
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and rest.startswith(b"HTTP/1.1 200 ")


def test_100_continue_is_not_promised_for_a_body_over_the_limit() -> None:
    async def handler(request: Request) -> Response:
        await request.send_continue()
        return await _limited(request)

    data = b"POST / HTTP/1.1\r\nHost: e\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n"
    answer = serve(handler, lambda port: raw_exchange(port, data))
    assert answer.startswith(b"HTTP/1.1 413 ")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            b"GET http://edge.example/p?q=1 HTTP/1.1\r\nHost: edge.example\r\nConnection: close\r\n\r\n",
            b"200",
        ),
        (b"GET / HTTP/2.0\r\nHost: e\r\n\r\n", b"505"),
    ],
    ids=["absolute-form", "http2-request-line"],
)
def test_request_targets_and_versions(data: bytes, expected: bytes) -> None:
    answer = serve(_echo, lambda port: raw_exchange(port, data))
    assert answer.split(b" ", 2)[1] == expected, answer[:60]
    if expected == b"200":
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["path"] == "/p?q=1"


def test_an_early_refusal_reaches_a_client_still_sending_its_body() -> None:
    def call(port: int) -> tuple[str, bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: e\r\nContent-Length: 4000000\r\n\r\n")
            sent = "whole"
            try:
                sock.sendall(b"a" * 4_000_000)  # the server answers 413 long before this ends
            except (BrokenPipeError, ConnectionResetError) as error:
                sent = type(error).__name__
            return sent, sock.recv(65536)

    sent, answer = serve(_limited, call)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert sent == "whole", "the server read and dropped the rest instead of resetting the connection"


def test_a_client_that_reads_nothing_of_its_answer_is_cut_off() -> None:
    body = b"x" * (32 << 20)  # more than the socket buffers on both sides hold
    cut = threading.Event()

    async def handler(request: Request) -> Response:
        return Response(200, body, content_type="application/octet-stream")

    def call(port: int) -> int:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(b"GET /big HTTP/1.1\r\nHost: e\r\n\r\n")
            assert cut.wait(10), "the server never cut the connection off"  # reads nothing till then
            received = 0
            with contextlib.suppress(OSError):
                while chunk := connection.recv(1 << 20):
                    received += len(chunk)
            return received

    def refused(peer: str, status: int, problem: str) -> None:
        if "read nothing" in problem:
            cut.set()

    received = serve(handler, call, max_body_bytes=1024, read_timeout_seconds=0.5, on_refused=refused)
    assert received < len(body)
