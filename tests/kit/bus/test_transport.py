from __future__ import annotations

import socket
from pathlib import Path

import pytest

from poly.events.v1.events_pb2 import EventEnvelope
from services.kit import bus, clients
from tests.support.env import settings_for


def test_an_unreachable_route_is_a_delivery_error(certs: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        address = f"localhost:{closed.getsockname()[1]}"
    settings = settings_for("orders", {"POLY_TLS_DIR": str(certs), "POLY_PAYMENTS_ADDRESS": address})
    channels = clients.Channels(settings)
    try:
        with pytest.raises(bus.DeliveryError, match="payments: UNAVAILABLE"):
            bus.EmbeddedTransport(channels, timeout=2).send("payments", EventEnvelope(id="e", type="t"))
    finally:
        channels.close()
