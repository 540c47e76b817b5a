"""The orders service's own database: SQLAlchemy tables and queries (no other service reads it)."""

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

from services.kit.db import naming_convention

__all__ = ["Base"]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=naming_convention)
