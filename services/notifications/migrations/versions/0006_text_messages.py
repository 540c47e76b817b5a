"""Text messages: what the provider calls each delivery it accepted, and numbers that opted out

`delivery.provider_reference` keeps a text's Twilio message SID, which its status callbacks
name; `text_failure` keeps a failure reported before the text's sending was recorded;
`text_opt_out` holds the numbers that answered STOP (until they answer START); an index on
(destination, channel, update_time) serves the per-number hourly count. Existing deliveries
get no reference; nothing is rewritten.

Revision ID: 0006
Revises: 0005
Created: 2026-12-07 01:20:00.000000
"""

import sqlalchemy as sa
from alembic import op

from services.kit.db import UtcDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    reference = sa.Column("provider_reference", sa.String(64), server_default="", nullable=False)
    op.add_column("delivery", reference)
    op.create_index(op.f("ix_delivery_provider_reference"), "delivery", ["provider_reference"])
    op.create_index(
        "ix_delivery_destination_channel_time", "delivery", ["destination", "channel", "update_time"]
    )
    op.create_table(
        "text_failure",
        sa.Column("reference", sa.String(length=64), nullable=False),
        sa.Column("error", sa.String(length=500), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("reference", name=op.f("pk_text_failure")),
    )
    op.create_table(
        "text_opt_out",
        sa.Column("number", sa.String(length=16), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("number", name=op.f("pk_text_opt_out")),
    )


def downgrade() -> None:
    op.drop_table("text_opt_out")
    op.drop_table("text_failure")
    op.drop_index("ix_delivery_destination_channel_time", table_name="delivery")
    op.drop_index(op.f("ix_delivery_provider_reference"), table_name="delivery")
    op.drop_column("delivery", "provider_reference")
