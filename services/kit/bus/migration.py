"""The event bus's tables as Alembic operations, written once for every service.

Each service's history creates them in its revision ``0002`` by calling these (its database
owns its own outbox and inbox); `services.kit.bus.tables` describes the same tables for
queries, and a test holds each service's migrated schema equal to it.
"""

import sqlalchemy as sa
from alembic import op

from services.kit.db import UtcDateTime

__all__ = ["downgrade_bus_tables", "upgrade_bus_tables"]


def upgrade_bus_tables() -> None:
    """Create the outbox, delivery, inbox and subscription tables (a service's 0002)."""
    op.create_table(
        "bus_inbox",
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("event_type", sa.String(length=200), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column(
            "received_at", UtcDateTime(), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_bus_inbox")),
    )
    op.create_table(
        "bus_outbox",
        sa.Column(
            "position",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("event_type", sa.String(length=200), nullable=False),
        sa.Column("aggregate_id", sa.String(length=200), nullable=False),
        sa.Column("occur_time", UtcDateTime(), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("position", name=op.f("pk_bus_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_bus_outbox_event_id")),
    )
    op.create_table(
        "bus_subscription",
        sa.Column("subscriber", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=200), nullable=False),
        sa.Column("created_at", UtcDateTime(), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False),
        sa.PrimaryKeyConstraint("subscriber", "event_type", name=op.f("pk_bus_subscription")),
    )
    op.create_table(
        "bus_delivery",
        sa.Column("position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("route", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=200), nullable=False),
        sa.Column("aggregate_id", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UtcDateTime(), nullable=False),
        sa.Column("lease_owner", sa.String(length=100), nullable=True),
        sa.Column("lease_until", UtcDateTime(), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("delivered_at", UtcDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["position"], ["bus_outbox.position"], name=op.f("fk_bus_delivery_position_bus_outbox")
        ),
        sa.PrimaryKeyConstraint("position", "route", name=op.f("pk_bus_delivery")),
    )
    with op.batch_alter_table("bus_delivery", schema=None) as batch_op:
        batch_op.create_index("ix_bus_delivery_due", ["state", "next_attempt_at"], unique=False)
        batch_op.create_index(
            "ix_bus_delivery_order", ["route", "aggregate_id", "state", "position"], unique=False
        )


def downgrade_bus_tables() -> None:
    """Drop them again (a service's 0002, downgraded)."""
    with op.batch_alter_table("bus_delivery", schema=None) as batch_op:
        batch_op.drop_index("ix_bus_delivery_order")
        batch_op.drop_index("ix_bus_delivery_due")

    op.drop_table("bus_delivery")
    op.drop_table("bus_subscription")
    op.drop_table("bus_outbox")
    op.drop_table("bus_inbox")
