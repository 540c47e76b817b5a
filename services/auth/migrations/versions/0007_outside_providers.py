"""outside providers: people linked to identities, and sign-ins awaiting their return

Signing in through an outside OpenID provider links the provider's person (issuer and
subject) to the identity they sign in as, and keeps each sign-in sent there (its state as a
SHA-256, nonce, PKCE verifier, the app's request and the browser it left from) until the
person returns, once, or it expires. An identity records whether an outside provider confirmed
its email address (existing ones: no).

Revision ID: 0007
Revises: 0006
Created: 2026-12-07 07:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

from services.kit.db import UtcDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("identity", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("email_verified", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    op.create_table(
        "external_identity",
        sa.Column("issuer", sa.String(length=255), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("identity_id", sa.String(length=64), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["identity_id"],
            ["identity.id"],
            name=op.f("fk_external_identity_identity_id_identity"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("issuer", "subject", name=op.f("pk_external_identity")),
    )
    with op.batch_alter_table("external_identity", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_external_identity_identity_id"), ["identity_id"], unique=False)
    op.create_table(
        "federated_login",
        sa.Column("state_hash", sa.String(length=64), nullable=False),
        sa.Column("alias", sa.String(length=32), nullable=False),
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("code_verifier", sa.String(length=128), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("binding", sa.String(length=64), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("expire_time", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("state_hash", name=op.f("pk_federated_login")),
    )
    with op.batch_alter_table("federated_login", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_federated_login_expire_time"), ["expire_time"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("federated_login", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_federated_login_expire_time"))
    op.drop_table("federated_login")
    with op.batch_alter_table("external_identity", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_external_identity_identity_id"))
    op.drop_table("external_identity")
    with op.batch_alter_table("identity", schema=None) as batch_op:
        batch_op.drop_column("email_verified")
