"""User profiles and their notification preferences (one row per user)

Revision ID: 0003
Revises: 0002
Created: 2026-11-26 00:44:40.469851
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
        "user_profile",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("display_name", sa.String(length=63), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.Column("delete_time", UtcDateTime(), nullable=True),
        sa.Column("email_enabled", sa.Boolean(), nullable=False),
        sa.Column("webhook_enabled", sa.Boolean(), nullable=False),
        sa.Column("muted_event_types", sa.String(length=1000), nullable=False),
        sa.Column("locale", sa.String(length=35), nullable=False),
        sa.Column("preferences_update_time", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_profile")),
    )
    with op.batch_alter_table("user_profile", schema=None) as batch_op:
        batch_op.create_index("ix_user_profile_create_time_id", ["create_time", "id"], unique=False)
        batch_op.create_index("ix_user_profile_display_name_id", ["display_name", "id"], unique=False)
        batch_op.create_index("ix_user_profile_email_id", ["email", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("user_profile", schema=None) as batch_op:
        batch_op.drop_index("ix_user_profile_email_id")
        batch_op.drop_index("ix_user_profile_display_name_id")
        batch_op.drop_index("ix_user_profile_create_time_id")

    op.drop_table("user_profile")
