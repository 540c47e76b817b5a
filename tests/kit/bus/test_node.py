"""`bus.node`: the handlers are checked against the contract, and on the embedded transport
a node starts without waiting for any peer (routes come from the contract)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from google.protobuf.message import Message
from sqlalchemy import Connection

from poly.events.v1.events_pb2 import (
    ContactChanged,
    EventEnvelope,
    OrderCancelled,
    OrderPaid,
    OrderPaymentFailed,
    UserRegistered,
)
from services.kit import bus, config
from services.kit.bus import contract
from tests.kit.bus.conftest import BusDb
from tests.support.env import free_port, settings_for


def _ignore(connection: Connection, payload: Message, envelope: EventEnvelope) -> None:
    """A handler whose effect does not matter here."""


_NOTIFICATIONS: bus.Handlers = {
    ContactChanged: _ignore,
    OrderCancelled: _ignore,
    OrderPaid: _ignore,
    OrderPaymentFailed: _ignore,
    UserRegistered: _ignore,
}
"""A handler for each event type the contract names notifications a consumer of."""


def _settings(service: str, certs: Path, **extra: str) -> config.Settings:
    # Peers on ports nobody listens on: a node that called one would wait or fail.
    peers = {f"POLY_{name.upper()}_ADDRESS": f"localhost:{free_port()}" for name in config.SERVICES}
    return settings_for(service, {"POLY_TLS_DIR": str(certs), **peers, **extra})


def test_a_handler_for_a_type_the_service_does_not_consume_is_refused(certs: Path, bus_db: BusDb) -> None:
    # orders publishes OrderPaid; the contract names notifications its only consumer.
    handlers: bus.Handlers = {OrderPaid: _ignore}
    with pytest.raises(ValueError, match=r"orders has a handler for poly\.events\.v1\.OrderPaid") as refused:
        bus.node(_settings("orders", certs), bus_db.engine, bus_db.tables, handlers)
    assert "(poly.options.v1.event)" in str(refused.value)
    assert "poly.events.v1.OrderPaid is consumed by notifications" in str(refused.value)


def test_a_declared_type_without_a_handler_is_logged(
    certs: Path, bus_db: BusDb, caplog: pytest.LogCaptureFixture
) -> None:
    # notifications consumes ContactChanged, OrderCancelled, OrderPaid, OrderPaymentFailed and
    # UserRegistered.
    with caplog.at_level(logging.WARNING, logger="poly.bus.node"):
        bus.node(_settings("notifications", certs), bus_db.engine, bus_db.tables, {OrderPaid: _ignore})
    [record] = [r for r in caplog.records if r.name == "poly.bus.node"]
    assert record.levelno == logging.WARNING
    assert record.__dict__["event_types"] == [
        "poly.events.v1.ContactChanged",
        "poly.events.v1.OrderCancelled",
        "poly.events.v1.OrderPaymentFailed",
        "poly.events.v1.UserRegistered",
    ]


def test_exactly_the_declared_handlers_pass_quietly(
    certs: Path, bus_db: BusDb, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="poly.bus.node"):
        node = bus.node(_settings("notifications", certs), bus_db.engine, bus_db.tables, _NOTIFICATIONS)
    assert [r for r in caplog.records if r.name == "poly.bus.node"] == []
    assert node.consumer.event_types == sorted(contract.consumed_by("notifications"))


def test_an_embedded_node_starts_without_waiting_for_its_peers(certs: Path, bus_db: BusDb) -> None:
    # No peer runs, and the (broker-only) connect wait is long: start must not block on it.
    settings = _settings("notifications", certs, POLY_BUS_SUBSCRIBE_WAIT_SECONDS="30")
    node = bus.node(settings, bus_db.engine, bus_db.tables, _NOTIFICATIONS)
    assert node.intake is None, "nothing to register: the publishers' routes come from the contract"
    began = time.monotonic()
    node.start()
    try:
        assert time.monotonic() - began < 5
    finally:
        node.stop()
