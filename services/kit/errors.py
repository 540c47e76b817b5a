"""Domain errors (`services.kit.domain_errors`) as gRPC statuses.

Domain code raises plain exceptions that carry a `reason` (``ORDER_NOT_CANCELLABLE``) and
an `ErrorKind`; only this module knows gRPC codes. Every status carries exactly one
``google.rpc.ErrorInfo`` (reason, domain ``<service>.poly.local``, and every value of the
message in its metadata), plus ``BadRequest`` field violations or ``RetryInfo`` where they
apply; a caller reads it back with `error_info`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.kit.domain_errors import DomainError, ErrorKind, InvalidArgument, ResourceExhausted, Unavailable
from services.kit.types import CallInfo, Handler, Middleware

__all__ = ["GRPC_CODES", "call_code", "error_info", "error_middleware", "internal_status", "to_status"]

GRPC_CODES: Mapping[ErrorKind, grpc.StatusCode] = {kind: grpc.StatusCode[kind.name] for kind in ErrorKind}
"""Each kind of domain error as the canonical status code of the same name."""

_log = logging.getLogger("poly.errors")


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _status(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str,
    domain: str,
    metadata: Mapping[str, str],
    extra: list[any_pb2.Any],
) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=dict(metadata))
    status = status_pb2.Status(code=code.value[0], message=message, details=[_packed(info), *extra])
    return rpc_status.to_status(status)


def to_status(error: DomainError, *, domain: str) -> grpc.Status:
    """The gRPC status for `error`, with ErrorInfo in `domain` (e.g. ``orders.poly.local``)."""
    extra: list[any_pb2.Any] = []
    if isinstance(error, InvalidArgument) and error.violations:
        extra.append(
            _packed(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in error.violations
                    ]
                )
            )
        )
    if isinstance(error, ResourceExhausted | Unavailable) and error.retry_after_seconds is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_seconds * 1e9))
        extra.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    return _status(
        GRPC_CODES[error.kind],
        error.message,
        reason=error.reason,
        domain=domain,
        metadata=error.metadata,
        extra=extra,
    )


def internal_status(*, domain: str) -> grpc.Status:
    """What the caller sees for an unexpected failure: no exception text, no stack frames."""
    return _status(
        grpc.StatusCode.INTERNAL, "internal error", reason="INTERNAL", domain=domain, metadata={}, extra=[]
    )


def _already_answered(context: grpc.ServicerContext) -> bool:
    """The handler chose its status itself (context.abort, or set_code and raise)."""
    code = context.code()
    return code is not None and code != grpc.StatusCode.OK


def _answer_as_set(context: grpc.ServicerContext) -> NoReturn:
    # Aborting with the code the handler set makes gRPC send it quietly; re-raising would
    # log "Exception calling application" with a traceback for, e.g., every UNIMPLEMENTED.
    context.abort(context.code(), context.details() or "")
    raise AssertionError("context.abort returned")  # it always raises; this keeps mypy honest


_DETAILS_KEY = "grpc-status-details-bin"


def call_code(error: grpc.RpcError) -> grpc.StatusCode:
    """The status code of a failed call; UNKNOWN for an error that carries none."""
    return error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo of a failed call's status (what a Polyservice server sends with every
    error); None when it has none (a transport failure, another server)."""
    if not isinstance(error, grpc.Call):
        return None
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # details that contradict the call's code: not to be trusted
        return None
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    return None


def error_middleware(domain: str) -> Middleware:
    """Middleware turning DomainError into its status and anything unexpected into INTERNAL.

    A `grpc.RpcError` from a downstream call keeps its code, message and details: a
    `NOT_FOUND` from payments stays `NOT_FOUND`, an `UNAVAILABLE` stays retryable.
    """

    def fail(context: grpc.ServicerContext, call: CallInfo, exc: Exception) -> NoReturn:
        if isinstance(exc, DomainError):
            context.abort_with_status(to_status(exc, domain=domain))
        if isinstance(exc, grpc.RpcError) and isinstance(exc, grpc.Call):
            details = tuple((k, v) for k, v in (exc.trailing_metadata() or ()) if k == _DETAILS_KEY)
            if details:  # a Polyservice status: pass it on whole, ErrorInfo and all
                context.set_trailing_metadata(details)
                context.abort(exc.code(), exc.details() or "")
            # A bare transport status: keep its code, not its text (addresses, internals).
            code = exc.code()
            context.abort_with_status(
                _status(
                    code,
                    f"upstream call failed with {code.name}",
                    reason=f"UPSTREAM_{code.name}",
                    domain=domain,
                    metadata={"code": code.name},
                    extra=[],
                )
            )
        _log.error("unexpected error in %s", call.method, exc_info=exc, extra={"method": call.method})
        context.abort_with_status(internal_status(domain=domain))
        raise AssertionError("context.abort_with_status returned")

    def stream(result: Iterator[Any], context: grpc.ServicerContext, call: CallInfo) -> Iterator[Any]:
        try:
            yield from result
        except Exception as exc:  # noqa: BLE001 - every exception becomes a status below
            if _already_answered(context):
                _answer_as_set(context)
            fail(context, call, exc)

    def middleware(request: Any, context: grpc.ServicerContext, call: CallInfo, proceed: Handler) -> Any:
        try:
            result = proceed(request, context)
        except Exception as exc:  # noqa: BLE001 - every exception becomes a status below
            if _already_answered(context):
                _answer_as_set(context)
            fail(context, call, exc)
        return stream(result, context, call) if call.response_streaming else result

    return middleware
