"""Cross-origin calls from browsers (the Fetch standard's CORS protocol).

For an origin in the edge's list (``*`` for any), a preflight (``OPTIONS`` with
``Access-Control-Request-Method``) is answered 204 with the methods, the headers the page
asked for and a ten-minute ``Max-Age``; every answer to that origin, streams included, gets
``Access-Control-Allow-Origin``, ``Vary: Origin`` and an ``Access-Control-Expose-Headers``
naming the headers that answer has, so ``fetch`` can read ``X-Request-Id`` or
``Grpc-Metadata-<key>`` (the standard takes names or a lone ``*``, never a pattern). They are
set as the head is written (`gateway.wire.Request.on_head`): a stream sends its head before
its handler returns. Any other origin gets no CORS header, and its browser refuses the answer.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Collection

from multidict import CIMultiDict

from gateway.wire import Request, Response, Stream

__all__ = ["allowing", "cors_headers"]

Handler = Callable[[Request], Awaitable[Response | Stream]]

_SAFELISTED = frozenset(
    {
        "cache-control",
        "content-language",
        "content-length",
        "content-type",
        "expires",
        "last-modified",
        "pragma",
    }
)
"""Response headers a browser shows a cross-origin page without being told (Fetch standard)."""
_METHODS = "GET, POST, PUT, PATCH, DELETE"
_MAX_AGE_SECONDS = "600"


def cors_headers(origin: str, headers: CIMultiDict[str]) -> None:
    """Add an allowed `origin`'s CORS headers to an answer's `headers`."""
    exposed = [
        name
        for name in dict.fromkeys(headers.keys())
        if name.lower() not in _SAFELISTED and not name.lower().startswith("access-control-")
    ]
    headers["Access-Control-Allow-Origin"] = origin
    headers.add("Vary", "Origin")
    if exposed:
        headers["Access-Control-Expose-Headers"] = ", ".join(exposed)


def allowing(origins: Collection[str], handler: Handler) -> Handler:
    """`handler` answering cross-origin calls from `origins` (``*`` for any)."""
    everyone = "*" in origins

    async def cross_origin(request: Request) -> Response | Stream:
        origin = request.headers.get("Origin", "")
        if not origin or not (everyone or origin in origins):
            return await handler(request)
        request.on_head = functools.partial(cors_headers, origin)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            preflight = Response(204, content_type=None)
            preflight.headers["Access-Control-Allow-Methods"] = _METHODS
            preflight.headers["Access-Control-Allow-Headers"] = request.headers.get(
                "Access-Control-Request-Headers", "authorization, content-type"
            )
            preflight.headers["Access-Control-Max-Age"] = _MAX_AGE_SECONDS
            return preflight
        return await handler(request)

    return cross_origin
