"""A contact's mobile number and its text and push switches, from users' ContactChanged

Contacts recorded before have no number, texts off and push on (what the users service's
own defaults are) until the user's next ContactChanged; nothing is rewritten.

Revision ID: 0005
Revises: 0004
Created: 2026-12-07 01:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("contact", sa.Column("phone_number", sa.String(16), server_default="", nullable=False))
    op.add_column(
        "contact", sa.Column("sms_enabled", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    op.add_column(
        "contact", sa.Column("push_enabled", sa.Boolean(), server_default=sa.true(), nullable=False)
    )


def downgrade() -> None:
    for column in ("push_enabled", "sms_enabled", "phone_number"):
        op.drop_column("contact", column)
