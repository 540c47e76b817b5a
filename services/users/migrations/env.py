"""Alembic environment of the users service; `services.kit.db.migrate` runs it."""

from services.kit.db import run_migrations_env
from services.users.store import Base

run_migrations_env(Base.metadata)
