"""A customer account keeps running totals: balance, held and update time

Until now every read of an account summed all its ledger entries and payments, so an
authorization cost more with every payment the customer had made (3.4 ms of CPU for an
authorize + capture at 100 earlier payments, 13.7 ms at 6,000). The account row now carries
`balance`, `held` and `update_time`, written by the store with each entry and payment change;
this revision adds them and fills them in from the ledger for every CUSTOMER account. System
accounts (FUNDING, MERCHANT: an entry for every payment) keep no totals and are summed when
read, as before.

Upgrade with no replica of the earlier payments release running: it would write entries and
payments without moving the totals. A downgrade drops the columns; nothing else changes.

Revision ID: 0004
Revises: 0003
Created: 2026-12-06 10:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

from services.kit.db import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_COLUMNS = ("balance", "held", "update_time")

# The tables as this revision finds them (never the store's current models).
_account = sa.table(
    "account",
    sa.column("id", sa.String()),
    sa.column("kind", sa.String()),
    sa.column("create_time", UtcDateTime()),
    sa.column("balance", sa.BigInteger()),
    sa.column("held", sa.BigInteger()),
    sa.column("update_time", UtcDateTime()),
)
_entry = sa.table(
    "ledger_entry",
    sa.column("account_id", sa.String()),
    sa.column("amount", sa.BigInteger()),
    sa.column("create_time", UtcDateTime()),
)
_payment = sa.table(
    "payment",
    sa.column("account_id", sa.String()),
    sa.column("amount", sa.BigInteger()),
    sa.column("state", sa.String()),
    sa.column("update_time", UtcDateTime()),
)


def upgrade() -> None:
    # Plain ADD COLUMN (SQLite and PostgreSQL): batch mode would rebuild the table on SQLite.
    op.add_column("account", sa.Column("balance", sa.BigInteger(), server_default="0", nullable=False))
    op.add_column("account", sa.Column("held", sa.BigInteger(), server_default="0", nullable=False))
    op.add_column("account", sa.Column("update_time", UtcDateTime(), nullable=True))
    mine = _entry.c.account_id == _account.c.id
    held = sa.and_(_payment.c.account_id == _account.c.id, _payment.c.state == "AUTHORIZED")
    customers = _account.c.kind == "CUSTOMER"
    balance = sa.select(sa.func.coalesce(sa.func.sum(_entry.c.amount), 0)).where(mine)
    holds = sa.select(sa.func.coalesce(sa.func.sum(_payment.c.amount), 0)).where(held)
    op.execute(
        _account.update()
        .where(customers)
        .values(
            balance=balance.scalar_subquery(),
            held=holds.scalar_subquery(),
            update_time=_account.c.create_time,
        )
    )
    # The latest change of each customer account: its opening, its last entry or its last
    # payment change, whichever came last (as reads derived it until now).
    for latest in (
        sa.select(sa.func.max(_entry.c.create_time)).where(mine).scalar_subquery(),
        sa.select(sa.func.max(_payment.c.update_time))
        .where(_payment.c.account_id == _account.c.id)
        .scalar_subquery(),
    ):
        later = sa.and_(customers, latest > _account.c.update_time)
        op.execute(_account.update().where(later).values(update_time=latest))


def downgrade() -> None:
    for column in reversed(_COLUMNS):
        op.drop_column("account", column)
