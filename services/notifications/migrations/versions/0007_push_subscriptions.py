"""Web Push: users' push subscriptions, and how many each user has

`push_subscription` holds one row per browser subscription (its endpoint unique: one browser
pushes to one user) with the keys pushes are encrypted to and the VAPID key it was made for;
`push_quota` counts them per owner, as `webhook_quota` counts webhooks. Push deliveries name
their subscription in `destination`; nothing existing is rewritten.

Revision ID: 0007
Revises: 0006
Created: 2026-12-07 03:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

from services.kit.db import UtcDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "push_subscription",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("endpoint", sa.String(length=2048), nullable=False),
        sa.Column("p256dh", sa.String(length=100), nullable=False),
        sa.Column("auth", sa.String(length=50), nullable=False),
        sa.Column("expire_time", UtcDateTime(), nullable=True),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("server_key", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_push_subscription")),
        sa.UniqueConstraint("endpoint", name=op.f("uq_push_subscription_endpoint")),
    )
    op.create_index("ix_push_subscription_owner_create_time", "push_subscription", ["owner", "create_time"])
    op.create_table(
        "push_quota",
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("owner", name=op.f("pk_push_quota")),
    )


def downgrade() -> None:
    op.drop_table("push_quota")
    op.drop_index("ix_push_subscription_owner_create_time", table_name="push_subscription")
    op.drop_table("push_subscription")
