"""Alembic environment of the auth service; `services.kit.db.migrate` runs it."""

from services.auth.store import Base
from services.kit.db import run_migrations_env

run_migrations_env(Base.metadata)
