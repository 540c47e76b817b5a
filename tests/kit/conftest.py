"""Fixtures shared by the kit's tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from services.kit import db
from services.kit.config import DatabaseSettings


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    """An empty database of each kind: a SQLite file in a folder not made yet, and a fresh
    PostgreSQL database (``postgres_url``)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'nested' / 'service.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    created = db.engine(DatabaseSettings(url=url))
    request.addfinalizer(created.dispose)
    return created
