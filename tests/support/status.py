"""What a failed call said: its code, its ErrorInfo reason, and its google.rpc details."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = ["Refusal", "refusal"]


@dataclass
class Refusal:
    code: grpc.StatusCode
    reason: str
    message: str
    metadata: dict[str, str] = field(default_factory=dict)
    violations: dict[str, str] = field(default_factory=dict)
    """Field path -> description, from BadRequest."""
    retry_after: float | None = None


def refusal(error: grpc.RpcError) -> Refusal:
    """The details of `error` (an RpcError raised by a call)."""
    assert isinstance(error, grpc.Call)
    found = Refusal(error.code(), "", error.details() or "")
    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        info, bad, retry = (
            error_details_pb2.ErrorInfo(),
            error_details_pb2.BadRequest(),
            error_details_pb2.RetryInfo(),
        )
        if detail.Unpack(info):
            found.reason, found.metadata = info.reason, dict(info.metadata)
        elif detail.Unpack(bad):
            found.violations.update({v.field: v.description for v in bad.field_violations})
        elif detail.Unpack(retry):
            found.retry_after = retry.retry_delay.ToTimedelta().total_seconds()
    return found
