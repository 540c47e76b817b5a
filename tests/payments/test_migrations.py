"""The payments database's migrations over data, on SQLite and PostgreSQL: 0004 gives every
customer account the running totals its ledger sums to, and the way back drops them."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, text

from services.kit import config, db
from services.payments.__main__ import SERVICE

_T0 = dt.datetime(2026, 12, 1)
"""Naive UTC, as the rows of 0003 are written here with plain SQL."""
_ACCOUNT = """
INSERT INTO account (id, kind, owner, currency, version, create_time)
VALUES (:id, :kind, :owner, 'EUR', 1, :at)
"""
_ENTRY = """
INSERT INTO ledger_entry (id, transaction_id, account_id, amount, currency, kind, payment_id, create_time)
VALUES (:id, :tx, :account, :amount, 'EUR', :kind, :payment, :at)
"""
_PAYMENT = """
INSERT INTO payment (id, order_name, account_id, owner, currency, amount, state, failure_reason,
                     create_time, update_time)
VALUES (:id, :order, :account, 'users/rich', 'EUR', :amount, :state, '', :at, :updated)
"""


def _at(minutes: int) -> dt.datetime:
    return _T0 + dt.timedelta(minutes=minutes)


def _seed(engine: Engine) -> None:
    """As 0003 stored them: a customer funded 1000, with one payment captured (300), one held
    (200, its hold changed last, at minute 9) and one declined; a customer never used; the
    system accounts."""
    with engine.begin() as connection:
        for account_id, kind, owner in (
            ("rich", "CUSTOMER", "users/rich"),
            ("idle", "CUSTOMER", "users/idle"),
            ("funding-eur", "FUNDING", ""),
            ("merchant-eur", "MERCHANT", ""),
        ):
            connection.execute(text(_ACCOUNT), {"id": account_id, "kind": kind, "owner": owner, "at": _at(0)})
        for payment, amount, state, updated in (
            ("p-captured", 300, "CAPTURED", _at(3)),
            ("p-held", 200, "AUTHORIZED", _at(9)),
            ("p-declined", 5000, "FAILED", _at(4)),
        ):
            values = {"id": payment, "order": f"orders/{payment}", "account": "rich", "amount": amount}
            connection.execute(text(_PAYMENT), {**values, "state": state, "at": _at(2), "updated": updated})
        for tx, legs, kind, payment, minute in (
            ("t-fund", (("funding-eur", -1000), ("rich", 1000)), "FUNDING", None, 1),
            ("t-capture", (("rich", -300), ("merchant-eur", 300)), "CAPTURE", "p-captured", 3),
        ):
            for account_id, amount in legs:
                connection.execute(
                    text(_ENTRY),
                    {
                        "id": f"{tx}-{account_id}",
                        "tx": tx,
                        "account": account_id,
                        "amount": amount,
                        "kind": kind,
                        "payment": payment,
                        "at": _at(minute),
                    },
                )


def _totals(engine: Engine) -> dict[str, tuple[int, int, dt.datetime | None]]:
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT id, balance, held, update_time FROM account ORDER BY id"))
        return {row[0]: (int(row[1]), int(row[2]), _naive(row[3])) for row in rows}


def _columns(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(connection.execute(text("SELECT * FROM account")).keys())


def test_0004_gives_customer_accounts_the_totals_their_ledger_sums_to(database_url: str) -> None:
    engine = db.engine(config.DatabaseSettings(url=database_url))
    try:
        db.migrate(engine, SERVICE.migrations, "0003")
        _seed(engine)
        db.migrate(engine, SERVICE.migrations)
        assert _totals(engine) == {
            # 1000 funded - 300 captured; 200 held; last changed when the hold was (minute 9).
            "rich": (700, 200, _at(9)),
            "idle": (0, 0, _at(0)),
            # System accounts keep no totals: they are summed when read.
            "funding-eur": (0, 0, None),
            "merchant-eur": (0, 0, None),
        }

        db.downgrade(engine, SERVICE.migrations, "0003")
        assert not _columns(engine) & {"balance", "held", "update_time"}
        db.migrate(engine, SERVICE.migrations)
        assert _totals(engine)["rich"] == (700, 200, _at(9))
    finally:
        engine.dispose()


def _naive(value: dt.datetime | str | None) -> dt.datetime | None:
    """A stored time as naive UTC (SQLite hands back text through `text()`)."""
    if value is None:
        return None
    parsed = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    return parsed if parsed.tzinfo is None else parsed.astimezone(dt.UTC).replace(tzinfo=None)
