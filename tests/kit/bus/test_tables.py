from __future__ import annotations

from sqlalchemy import MetaData

from services.kit import bus


def test_the_four_tables_are_added_to_a_services_metadata() -> None:
    metadata = MetaData()
    tables = bus.bus_tables(metadata)
    assert set(metadata.tables) == {"bus_outbox", "bus_delivery", "bus_inbox", "bus_subscription"}
    assert [c.name for c in tables.delivery.primary_key] == ["position", "route"]
    assert tables.inbox.c.event_id.primary_key
    assert tables.outbox.c.event_id.unique
