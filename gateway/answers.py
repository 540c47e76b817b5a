"""The edge's answers: a backend's reply with its metadata (`answer_with_metadata`), and what
the edge refuses itself: a `Refusal` is a ``google.rpc.Status`` with its HTTP status and extra
headers, raised anywhere in the handler and rendered once (`gateway.app`)."""

from __future__ import annotations

import math
import re

import grpc
from google.api import httpbody_pb2
from google.rpc import status_pb2

from gateway import errors, headers, tickets, trailers
from gateway.wire import Request, Response

__all__ = [
    "Metadata",
    "Refusal",
    "answer_with_metadata",
    "is_json",
    "raw_answer",
    "refusal",
    "require_json",
    "retry_after",
    "ticket_refusal",
]

Metadata = tuple[str, str | bytes]


def answer_with_metadata(
    request: Request,
    http: int,
    body: bytes,
    initial: list[Metadata],
    trailing: list[Metadata],
    *,
    content_type: str = "application/json",
    declared: frozenset[str] = frozenset(),
    succeeded: bool = True,
) -> Response:
    """An answer (JSON unless `content_type` says otherwise) with the call's metadata:
    ``Grpc-Metadata-*`` headers, and its trailers as HTTP trailers for a client that accepts
    them (`trailers`), else as ``Grpc-Trailer-*`` headers. Metadata the method `declared`
    (``poly.options.v1.response_headers``) goes out as headers of its own name, and its
    ``x-http-code`` as the status, when the call `succeeded`; after a failure it goes out not
    at all (a cookie a failed sign-in set must reach neither the browser's jar nor a script)."""
    pairs = headers.declared_headers([*initial, *trailing], declared) if declared and succeeded else []
    pairs += headers.response_headers(initial, [], declared=declared)
    after = headers.response_headers([], trailing, declared=declared)
    if declared and succeeded:
        try:
            http = headers.chosen_status([*initial, *trailing], declared, http)
        except headers.ConflictingStatus as conflict:
            raise refusal(grpc.StatusCode.INTERNAL, str(conflict), "CONFLICTING_STATUS") from None
    if http == 204:
        body = b""
    if after and http != 204 and trailers.accepts_trailers(request):
        answer = Response(http, body, content_type=content_type, trailers=after)
    else:
        answer = Response(http, body, content_type=content_type)
        pairs += after
    for name, value in pairs:
        answer.headers.add(name, value)
    return answer


def raw_answer(
    request: Request,
    http: int,
    body: httpbody_pb2.HttpBody,
    initial: list[Metadata],
    trailing: list[Metadata],
    *,
    declared: frozenset[str] = frozenset(),
) -> Response:
    """A `google.api.HttpBody` reply as grpc-gateway sends it: its ``data`` as the body, its
    ``content_type`` (else ``application/octet-stream``) as the type, never sniffed into
    another by the browser, and sandboxed (no script, no form) unless the method sent its own
    ``Content-Security-Policy``."""
    content_type = body.content_type if _HEADER_VALUE.fullmatch(body.content_type) else ""
    answer = answer_with_metadata(
        request,
        http,
        body.data,
        initial,
        trailing,
        content_type=content_type or "application/octet-stream",
        declared=declared,
    )
    answer.headers["X-Content-Type-Options"] = "nosniff"
    if "Content-Security-Policy" not in answer.headers:  # bytes a user may have made: no script
        answer.headers["Content-Security-Policy"] = "sandbox"
    return answer


_HEADER_VALUE = re.compile(r"[\x20-\x7e]{1,200}", re.ASCII)
"""A content type that can go in a header as it is (no line break, no control character)."""


def is_json(content_type: str) -> bool:
    """Whether a ``Content-Type`` names JSON: ``application/json`` or ``application/*+json``,
    in UTF-8 (RFC 8259) if it names a charset at all."""
    media_type, *parameters = (part.strip().lower() for part in content_type.split(";"))
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        return False
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip() == "charset" and value.strip().strip('"') not in {"utf-8", "utf8"}:
            return False
    return True


def require_json(request: Request) -> None:
    """A body must say it is JSON, else 415. A cross-origin page can send ``text/plain`` or a
    form without a preflight; refusing them keeps every browser call with a body behind CORS."""
    if request.headers.get("Content-Length", "0") == "0" and "Transfer-Encoding" not in request.headers:
        return  # no body: nothing to be JSON
    sent = request.headers.get("Content-Type", "")
    if is_json(sent):
        return
    accepted = "application/json"
    raise refusal(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"send the body as {accepted} (or a +json type) in UTF-8, not {sent[:64] or 'without a type'}",
        "UNSUPPORTED_MEDIA_TYPE",
        http=415,
        extra={"Accept-Patch" if request.method == "PATCH" else "Accept-Post": accepted},
    )


class Refusal(Exception):
    """Answer the request with `status` as HTTP `http`, `extra` headers added."""

    def __init__(self, status: status_pb2.Status, http: int, extra: dict[str, str] | None = None) -> None:
        super().__init__(status.message)
        self.status, self.http, self.extra = status, http, extra or {}


def refusal(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    *,
    http: int | None = None,
    violations: list[tuple[str, str]] | None = None,
    extra: dict[str, str] | None = None,
) -> Refusal:
    status = errors.status_message(code, message, reason=reason, violations=violations or [])
    return Refusal(status, http or errors.http_status(code), extra)


def retry_after(wait: float) -> dict[str, str]:
    """A ``Retry-After`` of `wait` seconds, rounded up to a whole second, at least 1."""
    return {"Retry-After": str(max(1, math.ceil(wait)))}


def ticket_refusal(error: tickets.TicketError) -> Refusal:
    """How a stream ticket that cannot be issued or redeemed is answered (`gateway.tickets`)."""
    if isinstance(error, tickets.TooManyTickets):
        return refusal(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            str(error),
            "STREAM_TICKETS_EXHAUSTED",
            extra=retry_after(error.retry_after),
        )
    if isinstance(error, tickets.MisplacedTicket):
        return refusal(grpc.StatusCode.INVALID_ARGUMENT, str(error), "STREAM_TICKET_MISPLACED")
    reason = "TOKEN_EXPIRED" if isinstance(error, tickets.TokenExpired) else "STREAM_TICKET_INVALID"
    return refusal(grpc.StatusCode.UNAUTHENTICATED, str(error), reason, extra={"WWW-Authenticate": "Bearer"})
