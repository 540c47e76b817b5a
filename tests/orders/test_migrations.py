"""The orders database's migrations over data, on SQLite and PostgreSQL: an upgrade keeps
every order's payment step where it was."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import text

from services.kit import config, db
from services.orders.__main__ import SERVICE

_ORDER = """
INSERT INTO orders (id, owner, state, currency, total_minor, payment, failure_reason, cancel_reason,
                    version, create_time, update_time, next_capture_at, capture_attempts)
VALUES (:id, 'users/u1', :state, 'EUR', 250, :payment, '', '', 1, :now, :now, :next_at, :attempts)
"""


def test_0004_makes_the_capture_schedule_the_payment_steps_and_pending_orders_due(database_url: str) -> None:
    # Before 0004 a PENDING order waited for payments' PaymentAuthorized (no schedule); after
    # it, orders' payment worker asks for it, so it must be due at once. The capture schedule
    # of an AWAITING_PAYMENT order carries over, renamed.
    engine = db.engine(config.DatabaseSettings(url=database_url))
    try:
        db.migrate(engine, SERVICE.migrations, "0003")
        now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC).replace(tzinfo=None)
        retry_at = now + dt.timedelta(seconds=40)
        with engine.begin() as connection:
            rows = [
                ("pending", "PENDING", "", None, 0),
                ("awaiting", "AWAITING_PAYMENT", "payments/p1", retry_at, 3),
                ("paid", "PAID", "payments/p2", None, 0),
            ]
            for order_id, state, payment, next_at, attempts in rows:
                connection.execute(
                    text(_ORDER),
                    {
                        "id": order_id,
                        "state": state,
                        "payment": payment,
                        "now": now,
                        "next_at": next_at,
                        "attempts": attempts,
                    },
                )
        before = dt.datetime.now(dt.UTC)
        db.migrate(engine, SERVICE.migrations)
        with engine.connect() as connection:
            query = "SELECT id, next_payment_at, payment_attempts FROM orders ORDER BY id"
            found = {row[0]: (row[1], row[2]) for row in connection.execute(text(query))}
    finally:
        engine.dispose()
    pending_at, pending_attempts = found["pending"]
    assert pending_at is not None and pending_attempts == 0, "a PENDING order is due"
    assert _aware(pending_at) >= before - dt.timedelta(seconds=5)
    assert (_aware(found["awaiting"][0]), found["awaiting"][1]) == (retry_at.replace(tzinfo=dt.UTC), 3)
    assert found["paid"] == (None, 0)


def _aware(value: dt.datetime | str) -> dt.datetime:
    """A stored time as UTC-aware (SQLite hands back naive UTC, or text through `text()`)."""
    parsed = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)
