"""The orders store over a real migrated database: what a read costs in round trips."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event

from services.kit import bus, config, db
from services.kit.money import Money
from services.orders import store
from services.orders.__main__ import SERVICE
from services.orders.domain import NewLine, Orders


def _allow(owner: str, resource: str) -> None:
    """An ownership check that admits everyone (the servicer's is tested with the service)."""


def test_an_order_and_its_lines_are_read_in_one_statement(tmp_path: Path) -> None:
    engine = db.connect(
        config.DatabaseSettings(url=f"sqlite:///{tmp_path / 'orders.db'}"), migrations=SERVICE.migrations
    )
    outbox = bus.Outbox(store.BUS, source="orders", routing=bus.consumer_routing())
    orders_store = store.OrdersStore(engine, outbox)
    lines = [NewLine(f"sku-{n}", n + 1, Money("EUR", 250)) for n in range(3)]
    placed = Orders(orders_store.transaction).create("users/u1", lines, "", "", _allow)
    statements: list[str] = []
    event.listen(
        engine, "before_cursor_execute", lambda _c, _cur, statement, *_: statements.append(statement)
    )
    with orders_store.transaction() as repo:
        statements.clear()
        found = repo.order(placed.id)
        reads = list(statements)
    assert found is not None and [line.sku for line in found.lines] == ["sku-0", "sku-1", "sku-2"]
    assert len(reads) == 1 and reads[0].lstrip().upper().startswith("SELECT"), reads
    engine.dispose()
