"""gateway.httpserver: one port for HTTP/1.1 and HTTP/2, the choice made per connection, and a
shutdown that lets what is in flight finish, over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading

from hyperframe.frame import HeadersFrame, SettingsFrame

from gateway.httpserver import Server
from gateway.wire import Request, Response
from tests.support.h2client import PREFACE, H2Client, frames, h2_call
from tests.support.http import http_call
from tests.support.http_server import curl, serve


async def _echo(request: Request) -> Response:
    document = {"version": list(request.version), "path": request.raw_path}
    return Response(200, json.dumps(document).encode())


def test_one_port_serves_http11_and_http2_clients() -> None:
    def call(port: int) -> tuple[list[int], list[int]]:
        over_h1 = http_call(port, "GET", "/one").json()["version"]
        over_h2 = json.loads(h2_call(port, "GET", "/two").body)["version"]
        return over_h1, over_h2

    assert serve(_echo, call) == ([1, 1], [2, 0])


def test_http2_can_be_turned_off() -> None:
    def call(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            return connection.recv(4096)

    answer = serve(_echo, call, http2=False)
    assert answer.startswith(b"HTTP/1.1 ") and b"HTTP/2" not in answer[:40]


def test_a_preface_split_across_reads_is_still_http2() -> None:
    def call(port: int) -> int:
        with H2Client(port, preface=False) as client:
            client.h2.initiate_connection()
            data = client.h2.data_to_send()
            for piece in (data[:3], data[3:10], data[10:]):
                client.socket.sendall(piece)
            stream = client.request("GET", "/split")
            client.read(until=[stream])
            return client.answers[stream].status

    assert serve(_echo, call) == 200


def test_curls_open_stream_finishes_during_a_shutdown() -> None:
    entered, release = threading.Event(), asyncio.Event()

    async def handler(request: Request) -> Response:
        entered.set()
        await release.wait()
        return Response(200, b'{"done":true}')

    async def run() -> str:
        server = Server(handler, max_body_bytes=1024)
        await server.start("127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.port}/slow"
        # curl (nghttp2) reads on after a GOAWAY, as RFC 9113 §6.8 says; h2's client does not.
        calling = asyncio.create_task(asyncio.to_thread(curl, "--http2-prior-knowledge", "-i", url))
        assert await asyncio.to_thread(entered.wait, 10)
        stopping = asyncio.create_task(server.shutdown(10.0))
        await asyncio.sleep(0)  # the shutdown runs up to its wait: the GOAWAY is out
        assert server.closing and not stopping.done(), "the shutdown waits for the open stream"
        release.set()
        answer = await calling
        await stopping
        return answer.stdout

    answer = asyncio.run(run())
    assert answer.startswith("HTTP/2 200") and answer.endswith('{"done":true}')


def test_shutdown_sends_goaway_first_then_the_open_streams_answer() -> None:
    entered, release = threading.Event(), asyncio.Event()

    async def handler(request: Request) -> Response:
        entered.set()
        await release.wait()
        return Response(200, b'{"done":true}')

    def open_stream(port: int) -> socket.socket:
        connection = socket.create_connection(("127.0.0.1", port), timeout=10)
        headers = HeadersFrame(1, bytes([0x82, 0x84, 0x86, 0x41, 0x04]) + b"edge")  # GET / on edge
        headers.flags.add("END_HEADERS")
        headers.flags.add("END_STREAM")
        connection.sendall(PREFACE + SettingsFrame(0).serialize() + headers.serialize())
        return connection

    def read_all(connection: socket.socket) -> bytes:
        received = b""
        with connection, contextlib.suppress(OSError):
            while chunk := connection.recv(65536):
                received += chunk
        return received

    async def run() -> bytes:
        server = Server(handler, max_body_bytes=1024)
        await server.start("127.0.0.1", 0)
        connection = await asyncio.to_thread(open_stream, server.port)
        assert await asyncio.to_thread(entered.wait, 10)
        stopping = asyncio.create_task(server.shutdown(10.0))
        await asyncio.sleep(0)  # the shutdown runs up to its wait: the GOAWAY is out
        release.set()
        received = await asyncio.to_thread(read_all, connection)
        await stopping
        return received

    sent = frames(asyncio.run(run()))
    kinds = [(frame.kind, frame.stream) for frame in sent if frame.kind in (0, 1, 7)]
    assert kinds[0] == (7, 0), "GOAWAY before the answer"
    goaway = next(frame for frame in sent if frame.kind == 7)
    assert goaway.payload[:8] == (1).to_bytes(4, "big") + (0).to_bytes(4, "big"), "last stream 1, NO_ERROR"
    data = [frame for frame in sent if frame.kind == 0 and frame.stream == 1]
    assert b"".join(frame.payload for frame in data) == b'{"done":true}' and data[-1].flags & 0x1
