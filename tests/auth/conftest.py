"""`local`: the auth domain's parts over a fresh SQLite store (`tests.auth.local`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.auth.local import LocalAuth, open_local


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalAuth]:
    opened = open_local(tmp_path / "auth.db")
    try:
        yield opened
    finally:
        opened.engine.dispose()
