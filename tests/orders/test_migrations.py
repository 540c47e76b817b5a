"""The orders database's migrations over data, on SQLite and PostgreSQL: an upgrade keeps
every order, its lines and its payment step where they were; so does the way back."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Engine, text

from services.kit import config, db
from services.orders.__main__ import SERVICE

_ORDER = """
INSERT INTO orders (id, owner, state, currency, total_minor, payment, failure_reason, cancel_reason,
                    version, create_time, update_time, next_capture_at, capture_attempts)
VALUES (:id, 'users/u1', :state, 'EUR', 500, :payment, '', '', 1, :now, :now, :next_at, :attempts)
"""
_LINE = """
INSERT INTO order_line (order_id, position, sku, quantity, unit_price_minor, total_minor)
VALUES (:id, :position, :sku, 1, 250, 250)
"""
_NOW = dt.datetime(2026, 12, 1)
"""Naive UTC, as the rows of 0003 are written here with plain SQL."""
_RETRY_AT = _NOW + dt.timedelta(seconds=40)


def _seed(engine: Engine) -> None:
    """Three orders of two lines each as 0003 stored them: PENDING (waiting for payments'
    event, no schedule), AWAITING_PAYMENT with a capture retry due, PAID."""
    rows = [
        ("pending", "PENDING", "", None, 0),
        ("awaiting", "AWAITING_PAYMENT", "payments/p1", _RETRY_AT, 3),
        ("paid", "PAID", "payments/p2", None, 0),
    ]
    with engine.begin() as connection:
        for order_id, state, payment, next_at, attempts in rows:
            values = {"id": order_id, "state": state, "payment": payment, "now": _NOW}
            connection.execute(text(_ORDER), {**values, "next_at": next_at, "attempts": attempts})
            for position in range(2):
                connection.execute(
                    text(_LINE), {"id": order_id, "position": position, "sku": f"sku-{position}"}
                )


def _read(engine: Engine, schedule: str, attempts: str) -> tuple[dict[str, tuple[Any, ...]], int]:
    with engine.connect() as connection:
        query = f"SELECT id, state, {schedule}, {attempts} FROM orders ORDER BY id"
        orders = {row[0]: (row[1], _aware(row[2]), row[3]) for row in connection.execute(text(query))}
        lines = connection.execute(text("SELECT count(*) FROM order_line")).scalar_one()
    return orders, int(lines)


def test_0004_keeps_orders_and_lines_and_makes_pending_orders_due(database_url: str) -> None:
    engine = db.engine(config.DatabaseSettings(url=database_url))
    try:
        db.migrate(engine, SERVICE.migrations, "0003")
        _seed(engine)
        before = dt.datetime.now(dt.UTC)
        db.migrate(engine, SERVICE.migrations)
        upgraded, lines = _read(engine, "next_payment_at", "payment_attempts")
        assert lines == 6, "every order keeps its lines"
        state, due_at, attempts = upgraded["pending"]
        # Orders' payment worker asks payments for a PENDING order now: it is due at once.
        assert state == "PENDING" and due_at is not None and due_at >= before - dt.timedelta(seconds=5)
        assert attempts == 0
        assert upgraded["awaiting"] == ("AWAITING_PAYMENT", _RETRY_AT.replace(tzinfo=dt.UTC), 3)
        assert upgraded["paid"] == ("PAID", None, 0)

        db.downgrade(engine, SERVICE.migrations, "0003")
        downgraded, lines = _read(engine, "next_capture_at", "capture_attempts")
        assert lines == 6
        assert downgraded["pending"] == ("PENDING", None, 0), "waiting for payments' event again"
        assert downgraded["awaiting"] == upgraded["awaiting"]
        db.migrate(engine, SERVICE.migrations)
        assert _read(engine, "next_payment_at", "payment_attempts")[1] == 6
    finally:
        engine.dispose()


def _aware(value: dt.datetime | str | None) -> dt.datetime | None:
    """A stored time as UTC-aware (SQLite hands back naive UTC, as text through `text()`)."""
    if value is None:
        return None
    parsed = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)
