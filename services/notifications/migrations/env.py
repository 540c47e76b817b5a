"""Alembic environment of the notifications service; `services.kit.db.migrate` runs it."""

from services.kit.db import run_migrations_env
from services.notifications.tables import Base

run_migrations_env(Base.metadata)
