"""A user's mobile number and the text and push channel switches of their preferences

`phone_number` (E.164, "" for none) is where text messages go; `sms_enabled` (off: texts are
opted into) and `push_enabled` (on) join the email and webhook switches. Existing users get
no number, texts off and push on, which the server defaults say; nothing is rewritten.

Revision ID: 0004
Revises: 0003
Created: 2026-12-07 01:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("user_profile", sa.Column("phone_number", sa.String(16), server_default="", nullable=False))
    op.add_column(
        "user_profile", sa.Column("sms_enabled", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    op.add_column(
        "user_profile", sa.Column("push_enabled", sa.Boolean(), server_default=sa.true(), nullable=False)
    )


def downgrade() -> None:
    for column in ("push_enabled", "sms_enabled", "phone_number"):
        op.drop_column("user_profile", column)
