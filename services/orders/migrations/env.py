"""Alembic environment of the orders service; `services.kit.db.migrate` runs it."""

from services.kit.db import run_migrations_env
from services.orders.store import Base

run_migrations_env(Base.metadata)
