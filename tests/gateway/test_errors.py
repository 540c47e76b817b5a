"""Tests of gateway.errors: status mapping and the one error body."""

from __future__ import annotations

import base64
import json

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from gateway import errors
from gateway.errors import (
    FALLBACK_BODY,
    HTTP_STATUS,
    BadRequest,
    http_status,
    render_status,
    status_message,
    status_of_rpc_error,
)

_EXPECTED = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500,
    "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}  # fmt: skip


def test_exports() -> None:
    assert set(errors.__all__) == {
        "BadRequest", "HTTP_STATUS", "http_status", "status_of_rpc_error", "status_message", "render_status",
        "FALLBACK_BODY",
    }  # fmt: skip


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=lambda code: code.name)
def test_every_code_maps_like_grpc_gateway(code: grpc.StatusCode) -> None:
    assert HTTP_STATUS[code] == _EXPECTED[code.name]
    assert http_status(code) == _EXPECTED[code.name]


def test_table_has_exactly_seventeen_codes() -> None:
    assert len(HTTP_STATUS) == 17 == len(list(grpc.StatusCode))


def test_unknown_code_is_500(caplog: pytest.LogCaptureFixture) -> None:
    assert http_status("bogus") == 500  # type: ignore[arg-type]
    assert "unknown gRPC status code" in caplog.text


def test_bad_request_carries_violations() -> None:
    error = BadRequest("bad", [("a.b", "broken")])
    assert error.message == "bad"
    assert str(error) == "bad"
    assert error.violations == [("a.b", "broken")]
    assert BadRequest("x").violations == []


def _unpack(
    status: status_pb2.Status,
) -> tuple[error_details_pb2.ErrorInfo, list[error_details_pb2.BadRequest]]:
    infos, bads = [], []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            bads.append(bad)
    assert len(infos) == 1
    return infos[0], bads


@pytest.mark.parametrize(
    ("violations", "bad_requests"),
    [((), 0), ((("page_size", "must be positive"), ("x", "unknown query parameter")), 1)],
    ids=["error-info-only", "with-violations"],
)
def test_status_message(violations: tuple[tuple[str, str], ...], bad_requests: int) -> None:
    status = status_message(
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid query",
        reason="INVALID_QUERY",
        violations=violations,
        metadata={"route": "r"},
    )
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert status.message == "invalid query"
    info, bads = _unpack(status)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "INVALID_QUERY",
        "gateway.poly.local",
        {"route": "r"},
    )
    assert len(bads) == bad_requests
    if bads:
        assert [(v.field, v.description) for v in bads[0].field_violations] == list(violations)


def test_render_status_resolves_known_details() -> None:
    status = status_message(grpc.StatusCode.NOT_FOUND, "no such route", reason="ROUTE_NOT_FOUND",
                            violations=[("path", "x")])  # fmt: skip
    body = json.loads(render_status(status))
    assert body["code"] == 5
    assert body["message"] == "no such route"
    assert body["details"][0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert body["details"][0]["reason"] == "ROUTE_NOT_FOUND"
    assert body["details"][0]["metadata"] == {}
    assert body["details"][1]["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert body["details"][1]["fieldViolations"][0]["description"] == "x"


def test_render_status_details_always_present() -> None:
    assert json.loads(render_status(status_pb2.Status(code=14))) == {"code": 14, "message": "", "details": []}


@pytest.mark.parametrize(
    "detail",
    [
        any_pb2.Any(type_url="type.googleapis.com/acme.Unknown", value=b"\x08\x01"),
        any_pb2.Any(type_url="type.googleapis.com/google.rpc.ErrorInfo", value=b"\xff\xff\xff"),
        any_pb2.Any(type_url="", value=b"\x01"),
    ],
    ids=["unknown-type", "undecodable-value", "no-type-url"],
)
def test_render_status_keeps_unresolvable_details(detail: any_pb2.Any) -> None:
    status = status_pb2.Status(code=3, message="m")
    status.details.append(detail)
    body = json.loads(render_status(status))
    assert body["details"] == [{"@type": detail.type_url, "value": base64.b64encode(detail.value).decode()}]


def test_render_status_fallback() -> None:
    class Broken:
        code = 3
        message = "m"

        @property
        def details(self) -> list[object]:
            raise RuntimeError("boom")

    assert render_status(Broken()) == FALLBACK_BODY
    assert json.loads(FALLBACK_BODY) == {
        "code": 13,
        "message": "failed to marshal error message",
        "details": [],
    }


def _rpc_error(
    code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str | bytes], ...] = ()
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=details)


def test_status_of_rpc_error_with_details() -> None:
    sent = status_message(
        grpc.StatusCode.FAILED_PRECONDITION,
        "not cancellable",
        reason="ORDER_NOT_CANCELLABLE",
        domain="orders.poly.local",
    )
    error = _rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        "not cancellable",
        (("x-other", "1"), ("grpc-status-details-bin", sent.SerializeToString())),
    )
    assert status_of_rpc_error(error) == sent


@pytest.mark.parametrize(
    "trailing",
    [
        (),
        (("grpc-status-details-bin", status_pb2.Status(code=5, message="other").SerializeToString()),),
        (("grpc-status-details-bin", b"\xff\xff"),),
    ],
    ids=["absent", "code-disagrees", "garbage"],
)
def test_status_of_rpc_error_without_usable_details(trailing: tuple[tuple[str, bytes], ...]) -> None:
    status = status_of_rpc_error(_rpc_error(grpc.StatusCode.UNAVAILABLE, "backend down", trailing))
    assert status == status_pb2.Status(code=code_pb2.UNAVAILABLE, message="backend down")
