"""login attempts reserved while verified

A login or client-token attempt is a login_failure row from the limit check that admits it:
pending (``attempt`` names it, ``pending_until`` ends its lease) until verification settles
it as a failure (both columns cleared) or releases it (row deleted). Existing rows are
failures.

Revision ID: 0004
Revises: 0003
Created: 2026-12-03 09:40:58.678065
"""

import sqlalchemy as sa
from alembic import op

from services.kit.db import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("login_failure", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempt", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("pending_until", UtcDateTime(), nullable=True))
        batch_op.create_index(batch_op.f("ix_login_failure_attempt"), ["attempt"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("login_failure", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_login_failure_attempt"))
        batch_op.drop_column("pending_until")
        batch_op.drop_column("attempt")
