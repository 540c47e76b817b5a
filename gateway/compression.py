"""gzip for the edge's answers to reads, negotiated by ``Accept-Encoding`` (RFC 9110 §12.5.3).

An answer to GET or HEAD of at least `MIN_BYTES` is gzipped for a client that accepts gzip,
and says ``Vary: Accept-Encoding`` either way (a cache must not hand the gzipped form to a
client that did not ask). Answers to writes are left alone: a login's tokens next to text an
attacker chose, compressed together, are what BREACH reads secrets from; reads carry neither.
Streams (NDJSON, SSE) are never compressed: each line must reach the client as it is written.
``/openapi.json`` (about 75 KB) is the largest beneficiary.
"""

from __future__ import annotations

import gzip

from gateway.wire import Handler, Request, Response, Stream

__all__ = ["MIN_BYTES", "accepts_gzip", "compress_reads", "compressing"]

MIN_BYTES = 1024
"""Smaller answers fit in one packet anyway: compressing them costs CPU for nothing."""
_LEVEL = 5
"""Most of level 9's gain for a third of its CPU, on JSON."""
_READS = frozenset({"GET", "HEAD"})


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` value accepts gzip: named (or ``x-gzip``) with a
    weight above 0, or ``*`` above 0 when gzip is not refused by name."""
    named: float | None = None
    anything: float | None = None
    for item in accept_encoding.split(","):
        coding, _, parameters = item.partition(";")
        coding = coding.strip().lower()
        weight = 1.0
        for parameter in parameters.split(";"):
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value.strip())
                except ValueError:
                    weight = 0.0
        if coding in {"gzip", "x-gzip"}:
            named = weight
        elif coding == "*":
            anything = weight
    if named is not None:
        return named > 0
    return anything is not None and anything > 0


def compress_reads(request: Request, response: Response, *, min_bytes: int = MIN_BYTES) -> None:
    """Gzip `response` in place when `request` is a read that accepts it (module docstring)."""
    if request.method not in _READS or response.status in {204, 304} or len(response.body) < min_bytes:
        return
    if "Content-Encoding" in response.headers:
        return
    response.headers.add("Vary", "Accept-Encoding")
    if not any(accepts_gzip(value) for value in request.headers.getall("Accept-Encoding", ())):
        return
    response.body = gzip.compress(response.body, compresslevel=_LEVEL, mtime=0)
    response.headers["Content-Encoding"] = "gzip"


def compressing(handler: Handler) -> Handler:
    """`handler`, its whole answers to reads gzipped by `compress_reads`. Inside the edge's
    observer, so that access lines and metrics count the bytes that went out."""

    async def compressed(request: Request) -> Response | Stream:
        answer = await handler(request)
        if isinstance(answer, Response):
            compress_reads(request, answer)
        return answer

    return compressed

