"""authorization codes, and sessions issued to a client

The authorization code flow keeps each one-time code (as a SHA-256) with what it grants until
it expires, its use recorded so that a second use is refused and revokes the session the first
one opened. A session (refresh family) names the client it was issued to and what it was
granted; existing sessions are password logins': no client.

Revision ID: 0006
Revises: 0005
Created: 2026-12-07 07:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

from services.kit.db import UtcDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "authorization_code",
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("identity_id", sa.String(length=64), nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        sa.Column("scope", sa.String(length=1000), nullable=False),
        sa.Column("code_challenge", sa.String(length=128), nullable=False),
        sa.Column("nonce", sa.String(length=255), nullable=False),
        sa.Column("auth_time", UtcDateTime(), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("expire_time", UtcDateTime(), nullable=False),
        sa.Column("use_time", UtcDateTime(), nullable=True),
        sa.Column("family_id", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["identity_id"],
            ["identity.id"],
            name=op.f("fk_authorization_code_identity_id_identity"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("code_hash", name=op.f("pk_authorization_code")),
    )
    with op.batch_alter_table("authorization_code", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_authorization_code_identity_id"), ["identity_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_authorization_code_expire_time"), ["expire_time"], unique=False)
    with op.batch_alter_table("refresh_family", schema=None) as batch_op:
        batch_op.add_column(sa.Column("client_id", sa.String(64), server_default="", nullable=False))
        batch_op.add_column(sa.Column("scope", sa.String(1000), server_default="", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("refresh_family", schema=None) as batch_op:
        batch_op.drop_column("scope")
        batch_op.drop_column("client_id")
    with op.batch_alter_table("authorization_code", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_authorization_code_expire_time"))
        batch_op.drop_index(batch_op.f("ix_authorization_code_identity_id"))
    op.drop_table("authorization_code")
