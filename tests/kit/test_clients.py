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
from services.kit import bus, clients, server, tls
from tests.support import probe_service
from tests.support.env import settings_for


def test_config_from_descriptors_times_unary_calls_and_retries_idempotent_ones() -> None:
    orders = orders_service_pb2.DESCRIPTOR.services_by_name["OrdersService"]
    auth = auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"]
    config = clients.service_config(deadline_seconds=2.5, services=[orders, auth])
    json.dumps(config)
    by_method = {
        (name["service"], name["method"]): entry for entry in config["methodConfig"] for name in entry["name"]
    }
    get_order = by_method[("poly.orders.v1.OrdersService", "GetOrder")]
    assert get_order["timeout"] == "2.500s"
    assert get_order["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    watch = by_method[("poly.orders.v1.OrdersService", "WatchOrder")]
    assert "timeout" not in watch, "a stream may stay open for hours"
    refresh = by_method[("poly.auth.v1.AuthService", "RefreshToken")]
    assert "retryPolicy" not in refresh and refresh["timeout"] == "2.500s"
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]


def test_client_keepalive_is_within_what_servers_accept() -> None:
    assert clients.KEEPALIVE_MS >= server.MIN_CLIENT_PING_INTERVAL_MS


def test_a_peer_back_from_an_outage_is_reconnected_within_the_relays_retry_delay() -> None:
    assert bus.RelaySettings().transient_max_delay * 1000 >= clients.MAX_RECONNECT_BACKOFF_MS


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


def test_the_default_deadline_applies_to_unary_calls_not_to_streams(orders_server: tuple[Path, int]) -> None:
    own, port = orders_server
    users = settings_for(
        "users",
        {
            "POLY_TLS_DIR": str(own),
            "POLY_ORDERS_ADDRESS": f"localhost:{port}",
            "POLY_CLIENT_DEADLINE_SECONDS": "0.3",
        },
    )
    with clients.channel(users, "orders", services=[probe_service.descriptor()]) as channel:
        stream = probe_service.stub(channel, "Hold", streaming=True)(wrappers_pb2.StringValue())
        assert next(stream).value == "open"
        with pytest.raises(grpc.RpcError) as caught:
            # Far past the deadline: grpcio's service-config deadlines can be off by about a
            # second on a busy machine (grpc/grpc#34547), and one CI run saw this call finish.
            probe_service.stub(channel, "Sleep")(wrappers_pb2.StringValue(value="6"))
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The unary call above ran into the 0.3 s default; the stream opened before it did not.
        assert stream.is_active()
        stream.cancel()


def test_a_server_with_another_components_certificate_is_refused(certs: Path) -> None:
    impostor = server.start(
        settings_for("users", {"POLY_TLS_DIR": str(certs), "POLY_USERS_PORT": "0"}),
        [probe_service.registration()],
    )
    try:
        caller = settings_for(
            "payments",
            {
                "POLY_TLS_DIR": str(certs),
                "POLY_ORDERS_ADDRESS": f"localhost:{impostor.port}",
                "POLY_USERS_ADDRESS": f"localhost:{impostor.port}",
            },
        )
        with clients.channel(caller, "orders") as channel, pytest.raises(grpc.RpcError) as caught:
            probe_service.stub(channel, "Echo")(wrappers_pb2.StringValue(value="x"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, "users' certificate cannot pass as orders"
        with clients.channel(caller, "users") as channel:
            assert (
                probe_service.stub(channel, "Echo")(wrappers_pb2.StringValue(value="x"), timeout=5).value
                == "x"
            )
    finally:
        impostor.drain()


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
