"""Event bus tables (the kit's, the same in every service: services.kit.bus.migration)

Revision ID: 0002
Revises: 0001
Created: 2026-11-25 22:36:26.397516
"""

from services.kit.bus.migration import downgrade_bus_tables, upgrade_bus_tables

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    upgrade_bus_tables()


def downgrade() -> None:
    downgrade_bus_tables()
