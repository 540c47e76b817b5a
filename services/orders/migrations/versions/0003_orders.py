"""Orders, their lines, and CreateOrder idempotency keys

Revision ID: 0003
Revises: 0002
Created: 2026-11-26 00:45:24.733437
"""

import sqlalchemy as sa
from alembic import op

from services.kit.db import UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "order_request",
        sa.Column("owner", sa.String(length=100), nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "request_id", name=op.f("pk_order_request")),
    )
    op.create_table(
        "orders",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=False),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.Column("payment", sa.String(length=100), nullable=False),
        sa.Column("failure_reason", sa.String(length=64), nullable=False),
        sa.Column("cancel_reason", sa.String(length=500), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.Column("next_capture_at", UtcDateTime(), nullable=True),
        sa.Column("capture_attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
    )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.create_index("ix_orders_create_time", ["create_time", "id"], unique=False)
        batch_op.create_index("ix_orders_owner_create_time", ["owner", "create_time", "id"], unique=False)
        batch_op.create_index("ix_orders_state_next_capture_at", ["state", "next_capture_at"], unique=False)
        batch_op.create_index("ix_orders_update_time", ["update_time", "id"], unique=False)

    op.create_table(
        "order_line",
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("unit_price_minor", sa.BigInteger(), nullable=False),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_order_line_order_id_orders"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("order_id", "position", name=op.f("pk_order_line")),
    )


def downgrade() -> None:
    op.drop_table("order_line")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index("ix_orders_update_time")
        batch_op.drop_index("ix_orders_state_next_capture_at")
        batch_op.drop_index("ix_orders_owner_create_time")
        batch_op.drop_index("ix_orders_create_time")

    op.drop_table("orders")
    op.drop_table("order_request")
