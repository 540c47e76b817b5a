"""HTTP trailers on a unary answer, for a client that says it accepts them (grpc-gateway's rule).

A request carrying ``TE: trailers`` (RFC 9110 §10.1.4) over HTTP/1.1 gets the call's trailing
metadata as real trailer fields: their names announced in ``Trailer``, the body sent chunked,
and ``Grpc-Trailer-<key>`` fields after its last chunk (RFC 9112 §7.1.2), on success and on
error alike (`gateway.wire.Response`'s ``trailers``, framed by each HTTP version). Without ``TE: trailers``
they stay ``Grpc-Trailer-<key>`` headers, as a client that never asked may not read trailers
at all. Streams end with their metadata unsent, as in grpc-gateway (their error line carries
the status).
"""

from __future__ import annotations

from gateway.wire import HTTP_2, HTTP_11, Request

__all__ = ["accepts_trailers"]

_CARRY_TRAILERS = (HTTP_11, HTTP_2)


def accepts_trailers(request: Request) -> bool:
    """Whether `request` can be answered with trailers: HTTP/1.1 (chunked framing exists) or
    HTTP/2 with ``trailers`` among its ``TE`` values, and a method whose answer has a body."""
    if request.version not in _CARRY_TRAILERS or request.method == "HEAD":
        return False
    for value in request.headers.getall("TE", ()):
        for item in value.split(","):
            if item.split(";", 1)[0].strip().lower() == "trailers":
                return True
    return False
