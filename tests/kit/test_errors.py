from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.kit import domain_errors, errors


def _status_proto(status: grpc.Status) -> status_pb2.Status:
    [(key, value)] = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    return status_pb2.Status.FromString(value)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (domain_errors.InvalidArgument("BAD", "bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (domain_errors.NotFound("ORDER_NOT_FOUND", "no"), grpc.StatusCode.NOT_FOUND),
        (domain_errors.AlreadyExists("DUPLICATE", "dup"), grpc.StatusCode.ALREADY_EXISTS),
        (
            domain_errors.FailedPrecondition("ORDER_NOT_CANCELLABLE", "no"),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (domain_errors.Aborted("CONCURRENT_UPDATE", "retry"), grpc.StatusCode.ABORTED),
        (domain_errors.PermissionDenied("NOT_OWNER", "no"), grpc.StatusCode.PERMISSION_DENIED),
        (domain_errors.Unauthenticated("TOKEN_EXPIRED", "no"), grpc.StatusCode.UNAUTHENTICATED),
        (domain_errors.ResourceExhausted("TOO_MANY_LOGINS", "wait"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (domain_errors.Unavailable("PROVIDER_DOWN", "later"), grpc.StatusCode.UNAVAILABLE),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, domain_errors.DomainError) else "",
)
def test_each_domain_error_has_its_code_and_one_error_info(
    error: domain_errors.DomainError, code: grpc.StatusCode
) -> None:
    status = errors.to_status(error, domain="orders.poly.local")
    assert status.code == code
    proto = _status_proto(status)
    assert proto.code == code.value[0]
    infos = [d for d in proto.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert len(infos) == 1
    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)
    assert (info.reason, info.domain) == (error.reason, "orders.poly.local")


def test_message_values_are_repeated_in_metadata() -> None:
    error = domain_errors.FailedPrecondition(
        "ORDER_NOT_CANCELLABLE", "order {order} is {state}", order="orders/7", state="PAID"
    )
    assert error.message == "order orders/7 is PAID"
    proto = _status_proto(errors.to_status(error, domain="orders.poly.local"))
    info = error_details_pb2.ErrorInfo()
    proto.details[0].Unpack(info)
    assert dict(info.metadata) == {"order": "orders/7", "state": "PAID"}


def test_retry_info_carries_the_delay() -> None:
    error = domain_errors.ResourceExhausted("TOO_MANY_LOGINS", "slow down", retry_after_seconds=1.5)
    proto = _status_proto(errors.to_status(error, domain="auth.poly.local"))
    retry = error_details_pb2.RetryInfo()
    assert proto.details[1].Unpack(retry)
    assert retry.retry_delay.ToNanoseconds() == 1_500_000_000


def test_internal_status_says_nothing_specific() -> None:
    status = errors.internal_status(domain="users.poly.local")
    assert status.code == grpc.StatusCode.INTERNAL
    assert status.details == "internal error"
    assert rpc_status.to_status(_status_proto(status)).code == grpc.StatusCode.INTERNAL


@pytest.mark.parametrize(
    "text", ["a{b}c", "use {0} here", "{a.b}", "{", "}"], ids=["name", "index", "attr", "open", "close"]
)
def test_braces_that_are_not_placeholders_keep_the_message(text: str) -> None:
    error = domain_errors.NotFound("THING_NOT_FOUND", text)
    assert error.message == text
    assert errors.to_status(error, domain="orders.poly.local").code == grpc.StatusCode.NOT_FOUND


def test_every_kind_of_domain_error_is_the_canonical_code_of_its_name() -> None:
    assert set(errors.GRPC_CODES) == set(domain_errors.ErrorKind)
    for kind, code in errors.GRPC_CODES.items():
        assert code.name == kind.name
