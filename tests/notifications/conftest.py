"""Fixtures shared by the notifications tests that drive the store in-process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.notifications_db import NotificationsDatabase


@pytest.fixture
def notifications(database_url: str) -> Iterator[NotificationsDatabase]:
    """The notifications tables on a fresh database of each kind (`database_url`)."""
    made = NotificationsDatabase(database_url)
    try:
        yield made
    finally:
        made.engine.dispose()
