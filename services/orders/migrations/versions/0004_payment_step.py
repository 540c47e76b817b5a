"""orders' payment step: authorize and capture, both asked by orders' payment worker

The capture schedule becomes the schedule of the whole payment step (a PENDING order is
authorized by the same worker, then captured): ``next_capture_at`` and ``capture_attempts``
are renamed ``next_payment_at`` and ``payment_attempts``. PENDING orders (their payment was
asked for by an OrderCreated event until now) are due at once: the worker asks payments
with the order's authorization key, and payments answers with the order's payment if the
event made one.

Upgrade orders and payments together, with no replica of the earlier orders release running:
it reads and writes the renamed columns, and it waits for PaymentAuthorized events that this
release's payments no longer sends to orders. After a downgrade, the orders placed while
this release ran stay PENDING (their OrderCreated was sent to no one) until it is upgraded
again.

Revision ID: 0004
Revises: 0003
Created: 2026-12-06 07:30:00.000000
"""

import datetime as dt

import sqlalchemy as sa
from alembic import op

from services.kit.db import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _rename(old: str, new: str) -> None:
    # A plain RENAME COLUMN (SQLite 3.25+, PostgreSQL): batch mode would rebuild the table on
    # SQLite, and dropping `orders` with foreign keys on deletes every order's lines.
    op.execute(f"ALTER TABLE orders RENAME COLUMN {old} TO {new}")


def upgrade() -> None:
    op.drop_index("ix_orders_state_next_capture_at", table_name="orders")
    _rename("next_capture_at", "next_payment_at")
    _rename("capture_attempts", "payment_attempts")
    op.create_index("ix_orders_state_next_payment_at", "orders", ["state", "next_payment_at"], unique=False)
    orders = sa.table("orders", sa.column("state", sa.String()), sa.column("next_payment_at", UtcDateTime()))
    op.execute(
        orders.update()
        .where(orders.c.state == "PENDING", orders.c.next_payment_at.is_(None))
        .values(next_payment_at=dt.datetime.now(dt.UTC))
    )


def downgrade() -> None:
    orders = sa.table("orders", sa.column("state", sa.String()), sa.column("next_payment_at", UtcDateTime()))
    op.execute(orders.update().where(orders.c.state == "PENDING").values(next_payment_at=None))
    op.drop_index("ix_orders_state_next_payment_at", table_name="orders")
    _rename("payment_attempts", "capture_attempts")
    _rename("next_payment_at", "next_capture_at")
    op.create_index("ix_orders_state_next_capture_at", "orders", ["state", "next_capture_at"], unique=False)
