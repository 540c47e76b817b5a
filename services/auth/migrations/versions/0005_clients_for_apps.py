"""OAuth clients for apps: public or confidential, redirect URIs, grants, first party

A client gets its type (`CONFIDENTIAL`, or `PUBLIC`: a browser or native app, with no secret:
its `secret_hash` is empty), the exact redirect URIs it may send its users back to, the grants
it may use and whether it is the deployment's own (no consent screen). Existing clients are
machine clients: confidential, client_credentials only, no redirect URI.

Revision ID: 0005
Revises: 0004
Created: 2026-12-07 04:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("client", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("client_type", sa.String(16), server_default="CONFIDENTIAL", nullable=False)
        )
        batch_op.add_column(sa.Column("redirect_uris", sa.Text(), server_default="", nullable=False))
        batch_op.add_column(
            sa.Column("grant_types", sa.String(200), server_default="client_credentials", nullable=False)
        )
        batch_op.add_column(sa.Column("first_party", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("client", schema=None) as batch_op:
        batch_op.drop_column("first_party")
        batch_op.drop_column("grant_types")
        batch_op.drop_column("redirect_uris")
        batch_op.drop_column("client_type")
