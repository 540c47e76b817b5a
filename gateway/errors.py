"""Errors at the edge: gRPC status to HTTP, and `google.rpc.Status` as the one JSON error body.

Exception tree of the gateway's request parsers::

    Exception
     └── BadRequest          a request the edge refuses before calling a backend (400),
                             carrying (field path, description) violations

Every error the gateway answers with goes down one path: build (or take from the backend) a
`google.rpc.Status`, map its code with `http_status`, and serialise it with `render_status`.
"""

from __future__ import annotations

import base64
import json
import logging
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2, json_format
from google.protobuf import message as _message
from google.rpc import (
    error_details_pb2,  # registers ErrorInfo, BadRequest... in the default pool for @type resolution
    status_pb2,
)

__all__ = [
    "BadRequest",
    "HTTP_STATUS",
    "http_status",
    "status_of_rpc_error",
    "status_message",
    "render_status",
    "FALLBACK_BODY",
]

_log = logging.getLogger(__name__)

_STATUS_DETAILS_KEY = "grpc-status-details-bin"

FALLBACK_BODY = b'{"code":13,"message":"failed to marshal error message","details":[]}'
"""The body sent when an error status itself cannot be serialised (grpc-gateway's fallback)."""


class BadRequest(Exception):
    """The request is malformed; `violations` lists (field path, description) pairs."""

    def __init__(self, message: str, violations: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.violations: list[tuple[str, str]] = list(violations)

    def __repr__(self) -> str:
        return f"BadRequest({self.message!r}, {self.violations!r})"


HTTP_STATUS: Mapping[grpc.StatusCode, int] = types.MappingProxyType(
    {
        grpc.StatusCode.OK: 200,
        grpc.StatusCode.CANCELLED: 499,
        grpc.StatusCode.UNKNOWN: 500,
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.DEADLINE_EXCEEDED: 504,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.ALREADY_EXISTS: 409,
        grpc.StatusCode.PERMISSION_DENIED: 403,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
        grpc.StatusCode.FAILED_PRECONDITION: 400,
        grpc.StatusCode.ABORTED: 409,
        grpc.StatusCode.OUT_OF_RANGE: 400,
        grpc.StatusCode.UNIMPLEMENTED: 501,
        grpc.StatusCode.INTERNAL: 500,
        grpc.StatusCode.UNAVAILABLE: 503,
        grpc.StatusCode.DATA_LOSS: 500,
        grpc.StatusCode.UNAUTHENTICATED: 401,
    }
)
"""gRPC code to HTTP status, exactly as grpc-gateway's `runtime.HTTPStatusFromCode`."""


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status for a gRPC code; an unknown code is logged and becomes 500."""
    status = HTTP_STATUS.get(code)
    if status is None:
        _log.warning("unknown gRPC status code %r mapped to HTTP 500", code)
        return 500
    return status


def _code_number(code: grpc.StatusCode) -> int:
    value: Any = code.value
    return int(value[0])


def _details_bin(metadata: Any) -> bytes | None:
    for item in metadata or ():
        if not isinstance(item, tuple) or len(item) != 2:
            continue
        key, value = item
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            return value
    return None


def status_of_rpc_error(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The backend's `google.rpc.Status`, with details from `grpc-status-details-bin` if it agrees.

    When the trailer is absent, unparsable, or names another code than the call, the status is
    rebuilt from the call's code and message, without details.
    """
    code = error.code()
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    message = error.details() or ""
    raw = _details_bin(error.trailing_metadata())
    if raw is not None:
        status = status_pb2.Status()
        try:
            status.ParseFromString(raw)
        except _message.DecodeError:
            _log.warning("unparsable %s trailer from backend ignored", _STATUS_DETAILS_KEY)
        else:
            if status.code == _code_number(code):
                return status
            _log.warning("%s trailer code %d disagrees with %s", _STATUS_DETAILS_KEY, status.code, code)
    return status_pb2.Status(code=_code_number(code), message=message)


def status_message(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str,
    domain: str = "gateway.poly.local",
    violations: Sequence[tuple[str, str]] = (),
    metadata: Mapping[str, str] = types.MappingProxyType({}),
) -> status_pb2.Status:
    """A `google.rpc.Status` with exactly one `ErrorInfo` and, given violations, one `BadRequest`."""
    status = status_pb2.Status(code=_code_number(code), message=message)
    info = error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=dict(metadata))
    status.details.add().Pack(info)
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
                for field, description in violations
            ]
        )
        status.details.add().Pack(bad)
    return status


def _render_detail(detail: any_pb2.Any) -> dict[str, Any]:
    try:
        rendered: dict[str, Any] = json_format.MessageToDict(
            detail, always_print_fields_with_no_presence=True
        )
    except (json_format.Error, _message.Error, TypeError, ValueError, KeyError, AttributeError):
        # A type the gateway does not know (or undecodable bytes): keep it, opaque.
        return {"@type": detail.type_url, "value": base64.b64encode(detail.value).decode("ascii")}
    return rendered


def render_status(status: status_pb2.Status) -> bytes:
    """`status` as proto3 JSON `{"code", "message", "details": [...]}`; `FALLBACK_BODY` if that fails."""
    try:
        body = {
            "code": int(status.code),
            "message": str(status.message),
            "details": [_render_detail(detail) for detail in status.details],
        }
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except Exception:  # noqa: BLE001 - the last line of defence, converted to the fixed body
        _log.exception("failed to serialise an error status")
        return FALLBACK_BODY
