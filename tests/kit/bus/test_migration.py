"""kit.bus.migration: the bus tables every service's revision 0002 creates, written once."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect

from services.kit import config, db

_BUS_TABLES = {"bus_outbox", "bus_delivery", "bus_inbox", "bus_subscription"}


def _migrations(service: str) -> Path:
    return Path(importlib.import_module(f"services.{service}").__file__ or "").with_name("migrations")


@pytest.mark.parametrize("service", config.SERVICES)
def test_every_service_gets_the_bus_tables_from_its_revision_0002(engine: Engine, service: str) -> None:
    db.migrate(engine, _migrations(service), "0001")
    assert not _BUS_TABLES & set(inspect(engine).get_table_names())
    db.migrate(engine, _migrations(service), "0002")
    assert set(inspect(engine).get_table_names()) >= _BUS_TABLES
    indexes = {index["name"] for index in inspect(engine).get_indexes("bus_delivery")}
    assert {"ix_bus_delivery_due", "ix_bus_delivery_order"} <= indexes
    db.migrate(engine, _migrations(service))  # then on to the newest, as a service starts
    assert set(inspect(engine).get_table_names()) >= _BUS_TABLES
