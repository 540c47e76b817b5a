"""orders' payment step: authorize and capture, both asked by orders' payment worker

The capture schedule becomes the schedule of the whole payment step (a PENDING order is
authorized by the same worker, then captured): ``next_capture_at`` and ``capture_attempts``
are renamed ``next_payment_at`` and ``payment_attempts``. PENDING orders (their payment was
asked for by an OrderCreated event until now) are due at once: the worker asks payments
with the order's authorization key, and payments answers with the order's payment if the
event made one.

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


def upgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index("ix_orders_state_next_capture_at")
        batch_op.alter_column("next_capture_at", new_column_name="next_payment_at")
        batch_op.alter_column("capture_attempts", new_column_name="payment_attempts")
    with op.batch_alter_table("orders", schema=None) as batch_op:  # on the renamed column
        batch_op.create_index("ix_orders_state_next_payment_at", ["state", "next_payment_at"], unique=False)
    orders = sa.table("orders", sa.column("state", sa.String()), sa.column("next_payment_at", UtcDateTime()))
    op.execute(
        orders.update()
        .where(orders.c.state == "PENDING", orders.c.next_payment_at.is_(None))
        .values(next_payment_at=dt.datetime.now(dt.UTC))
    )


def downgrade() -> None:
    orders = sa.table("orders", sa.column("state", sa.String()), sa.column("next_payment_at", UtcDateTime()))
    op.execute(orders.update().where(orders.c.state == "PENDING").values(next_payment_at=None))
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index("ix_orders_state_next_payment_at")
        batch_op.alter_column("payment_attempts", new_column_name="capture_attempts")
        batch_op.alter_column("next_payment_at", new_column_name="next_capture_at")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.create_index("ix_orders_state_next_capture_at", ["state", "next_capture_at"], unique=False)
