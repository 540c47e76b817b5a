from __future__ import annotations

from sqlalchemy import update

from services.kit import bus
from tests.kit.bus.conftest import BusDb, Clock, publish


def test_redrive_all_and_state_counts(bus_db: BusDb) -> None:
    outbox = bus.Outbox(bus_db.tables, source="orders", routing=bus.broker_routing(), clock=Clock())
    for i in range(4):
        publish(bus_db, outbox, f"orders/{i}", f"orders/{i}")
    d = bus_db.tables.delivery
    with bus_db.engine.begin() as connection:
        connection.execute(update(d).where(d.c.position <= 2).values(state=bus.DEAD, attempts=8))
    assert bus.state_counts(bus_db.engine, bus_db.tables) == {bus.DEAD: 2, bus.PENDING: 2}
    assert len(bus.dead_letters(bus_db.engine, bus_db.tables)) == 2
    assert bus.redrive(bus_db.engine, bus_db.tables) == 2
    assert bus.state_counts(bus_db.engine, bus_db.tables) == {bus.PENDING: 4}
    assert bus.redrive(bus_db.engine, bus_db.tables) == 0
