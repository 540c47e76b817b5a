"""kit.telemetry.metrics: names and labels as dashboards expect them."""

from __future__ import annotations

import grpc
from google.protobuf import wrappers_pb2

from services.kit.telemetry.metrics import GO_CODE_NAMES

_S = wrappers_pb2.StringValue
_ECHO = "poly.test.v1.ProbeService"


def test_go_code_names_cover_every_status() -> None:
    assert len(GO_CODE_NAMES) == len(grpc.StatusCode)
    assert GO_CODE_NAMES[grpc.StatusCode.CANCELLED] == "Canceled"
    assert GO_CODE_NAMES[grpc.StatusCode.INVALID_ARGUMENT] == "InvalidArgument"
    assert GO_CODE_NAMES[grpc.StatusCode.OK] == "OK"
