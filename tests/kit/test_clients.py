from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import wrappers_pb2

from poly.auth.v1 import auth_service_pb2
from poly.orders.v1 import orders_service_pb2
from services.kit import clients, server, tls
from tests.support import probe_service
from tests.support.env import settings_for


def test_retries_only_for_the_listed_methods() -> None:
    config = clients.service_config(
        deadline_seconds=2.5, retryable=[("poly.orders.v1.OrdersService", "GetOrder")]
    )
    json.dumps(config)
    retrying, default = config["methodConfig"]
    assert retrying["name"] == [{"service": "poly.orders.v1.OrdersService", "method": "GetOrder"}]
    assert retrying["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert default == {"name": [{}], "timeout": "2.500s"}
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]


def test_idempotent_methods_come_from_the_proto_option() -> None:
    auth = clients.idempotent_methods(auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"])
    assert ("poly.auth.v1.AuthService", "GetJwks") in auth
    assert ("poly.auth.v1.AuthService", "RefreshToken") not in auth  # rotation: a retry would be reuse
    orders = clients.idempotent_methods(orders_service_pb2.DESCRIPTOR.services_by_name["OrdersService"])
    assert ("poly.orders.v1.OrdersService", "CreateOrder") in orders  # through its request_id


@pytest.fixture
def orders_server(tmp_path: Path, certs: Path) -> Iterator[tuple[Path, int]]:
    own = tmp_path / "certs"
    shutil.copytree(certs, own)
    settings = settings_for("orders", {"POLY_TLS_DIR": str(own), "POLY_ORDERS_PORT": "0"})
    running = server.start(settings, [probe_service.registration()])
    try:
        yield own, running.port
    finally:
        running.drain()


def test_a_channel_reaches_its_peer_over_mtls(orders_server: tuple[Path, int]) -> None:
    own, port = orders_server
    users = settings_for("users", {"POLY_TLS_DIR": str(own), "POLY_ORDERS_ADDRESS": f"localhost:{port}"})
    with clients.channel(users, "orders") as channel:
        echo = probe_service.stub(channel, "Echo")
        assert echo(wrappers_pb2.StringValue(value="hello"), timeout=5).value == "hello"


def test_the_default_deadline_applies(orders_server: tuple[Path, int]) -> None:
    own, port = orders_server
    users = settings_for(
        "users",
        {
            "POLY_TLS_DIR": str(own),
            "POLY_ORDERS_ADDRESS": f"localhost:{port}",
            "POLY_CLIENT_DEADLINE_SECONDS": "0.2",
        },
    )
    with clients.channel(users, "orders") as channel, pytest.raises(grpc.RpcError) as caught:
        probe_service.stub(channel, "Sleep")(wrappers_pb2.StringValue(value="2"))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_channels_are_rebuilt_when_the_certificate_changes(orders_server: tuple[Path, int]) -> None:
    own, port = orders_server
    users = settings_for("users", {"POLY_TLS_DIR": str(own), "POLY_ORDERS_ADDRESS": f"localhost:{port}"})
    pool = clients.Channels(users, check_interval=0.0, close_delay=0.0)
    try:
        first = pool.get("orders")
        assert pool.get("orders") is first, "unchanged files keep the channel"
        tls.ensure_certificates(own, ["users"], force=True)
        second = pool.get("orders")
        assert second is not first
        reply = probe_service.stub(second, "Echo")(wrappers_pb2.StringValue(value="again"), timeout=5)
        assert reply.value == "again"
    finally:
        pool.close()
