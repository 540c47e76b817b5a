"""Outside payment providers: a payment's provider and its ids, compensation still to ask
of it, and an account's reusable payment method at the provider

A payment held by Stripe or PayPal records which (`provider`, "" for the ledger), the
payment method and provider customer it was asked with (`charged_method`, `charged_customer`:
a retry asks with exactly these), the provider's authorization (`provider_reference`, looked up
when its webhook events arrive) and capture (`provider_capture`), saga compensation the
provider worker still has to ask for (`compensation`, `compensation_reason`), and when the
worker asks next (`provider_attempts`, `provider_retry_at`). A customer account records the payment method its
owner set at the provider and the provider's customer it belongs to. Every existing row is a
ledger payment or account, which the defaults ("") describe; nothing is rewritten.

Revision ID: 0005
Revises: 0004
Created: 2026-12-07 01:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

from services.kit.db import UtcDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_PAYMENT_COLUMNS = (
    ("provider", 16),
    ("charged_method", 255),
    ("charged_customer", 255),
    ("provider_reference", 255),
    ("provider_capture", 255),
    ("compensation", 16),
    ("compensation_reason", 500),
)
_ACCOUNT_COLUMNS = (("payment_method", 255), ("provider_customer", 255))


def upgrade() -> None:
    # Plain ADD COLUMN with a default (SQLite and PostgreSQL): no table is rebuilt.
    for column, length in _PAYMENT_COLUMNS:
        op.add_column("payment", sa.Column(column, sa.String(length), server_default="", nullable=False))
    op.add_column("payment", sa.Column("provider_attempts", sa.Integer(), server_default="0", nullable=False))
    op.add_column("payment", sa.Column("provider_retry_at", UtcDateTime(), nullable=True))
    for column, length in _ACCOUNT_COLUMNS:
        op.add_column("account", sa.Column(column, sa.String(length), server_default="", nullable=False))
    op.create_index(op.f("ix_payment_provider_reference"), "payment", ["provider_reference"])
    op.create_index(op.f("ix_payment_provider_capture"), "payment", ["provider_capture"])


def downgrade() -> None:
    op.drop_index(op.f("ix_payment_provider_capture"), table_name="payment")
    op.drop_index(op.f("ix_payment_provider_reference"), table_name="payment")
    for column, _ in reversed(_ACCOUNT_COLUMNS):
        op.drop_column("account", column)
    op.drop_column("payment", "provider_retry_at")
    op.drop_column("payment", "provider_attempts")
    for column, _ in reversed(_PAYMENT_COLUMNS):
        op.drop_column("payment", column)
