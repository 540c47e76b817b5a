"""The orders service's own database: SQLAlchemy tables and queries (no other service reads it)."""

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

from services.kit.bus import BusTables, bus_tables
from services.kit.db import naming_convention

__all__ = ["BUS", "Base"]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=naming_convention)


BUS: BusTables = bus_tables(Base.metadata)
"""Outbox, deliveries, inbox and subscriptions of this service's events."""
