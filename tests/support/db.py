"""ORM sessions over `kit.db` transactions, for tests that write and read mapped rows."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from services.kit import db


@contextmanager
def orm_transaction(engine: Engine, **options: Any) -> Iterator[Session]:
    """`kit.db.transaction(engine, **options)`, with an `orm_session` over it."""
    with db.transaction(engine, **options) as connection:
        yield db.orm_session(connection)
