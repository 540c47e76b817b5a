"""Plain HTTP/1.1 calls to an edge on 127.0.0.1, and what came back."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import h11

__all__ = ["Answer", "TrailedAnswer", "http_call", "http_calls_with_trailers", "raw_exchange"]


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_call(
    port: int,
    method: str,
    path: str,
    body: object = None,
    *,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 30.0,
    source: str = "127.0.0.1",
    http10: bool = False,
) -> Answer:
    """One request from the address `source`: `body` sent as JSON, or `raw` bytes as they are;
    `http10`: as an HTTP/1.0 client."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    if http10:
        # http.client's own switch (class attributes it reads per request)
        connection._http_vsn, connection._http_vsn_str = 10, "HTTP/1.0"  # type: ignore[attr-defined]
    try:
        payload = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = dict(headers or {})
        if payload is not None and not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = "application/json"  # the edge refuses a body of another type
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        connection.close()


@dataclass
class TrailedAnswer:
    status: int
    headers: list[tuple[str, str]]
    """Names in lower case, in the order sent."""
    body: bytes
    trailers: list[tuple[str, str]]
    """The fields after the last chunk (names in lower case)."""

    def header(self, name: str) -> str | None:
        found = [value for key, value in self.headers if key == name.lower()]
        return ", ".join(found) if found else None


def http_calls_with_trailers(
    port: int, requests: Sequence[tuple[str, str, bytes]], *, headers: dict[str, str], timeout: float = 15.0
) -> list[TrailedAnswer]:
    """``(method, path, body)`` requests one after another on one connection, each with
    `headers`, parsed by h11 (http.client reads past trailers without a word)."""
    client = h11.Connection(h11.CLIENT)
    answers: list[TrailedAnswer] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        for method, path, body in requests:
            fields = [("Host", f"127.0.0.1:{port}"), *headers.items()]
            if body:
                fields += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
            wire = client.send(h11.Request(method=method, target=path, headers=fields)) or b""
            if body:
                wire += client.send(h11.Data(data=body)) or b""
            connection.sendall(wire + (client.send(h11.EndOfMessage()) or b""))
            answers.append(_answer_of(client, connection))
            client.start_next_cycle()
    return answers


def _answer_of(client: h11.Connection, connection: socket.socket) -> TrailedAnswer:
    answer = TrailedAnswer(0, [], b"", [])
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(connection.recv(65536))
        elif isinstance(event, h11.Response):
            answer.status = event.status_code
            answer.headers = [(name.decode(), value.decode()) for name, value in event.headers]
        elif isinstance(event, h11.Data):
            answer.body += event.data
        elif isinstance(event, h11.EndOfMessage):
            answer.trailers = [(name.decode(), value.decode()) for name, value in event.headers]
            return answer


def raw_exchange(
    port: int,
    data: bytes,
    *,
    pause: float = 0.0,
    rest: bytes = b"",
    pieces: int = 0,
    timeout: float = 10.0,
) -> bytes:
    """Send `data` (then `rest` after `pause` seconds, `pieces` times when given: a trickle) on
    a fresh connection to 127.0.0.1 and read until the server closes it; a refusal before all
    was sent is read all the same."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
            for _ in range(pieces or (1 if rest else 0)):
                time.sleep(pause)
                sock.sendall(rest)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    return received
