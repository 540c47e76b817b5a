"""Contacts recorded from users' ContactChanged events

Revision ID: 0004
Revises: 0003
Created: 2026-12-06 00:24:35.207619
"""

import sqlalchemy as sa
from alembic import op

from services.kit.db import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "contact",
        sa.Column("recipient", sa.String(length=200), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("display_name", sa.String(length=63), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("email_enabled", sa.Boolean(), nullable=False),
        sa.Column("webhook_enabled", sa.Boolean(), nullable=False),
        sa.Column("muted_event_types", sa.String(length=1000), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("recipient", name=op.f("pk_contact")),
    )


def downgrade() -> None:
    op.drop_table("contact")
