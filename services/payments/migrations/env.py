"""Alembic environment of the payments service; `services.kit.db.migrate` runs it."""

from services.kit.db import run_migrations_env
from services.payments.store import Base

run_migrations_env(Base.metadata)
