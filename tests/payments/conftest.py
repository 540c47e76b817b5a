"""One auth + payments deployment per database backend, shared by a module's tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.payments.helpers import System
from tests.support.identity import start


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def system(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    database = {}
    if request.param == "postgresql":
        make: Callable[[], str] = request.getfixturevalue("postgres_databases")
        database = {"POLY_PAYMENTS_DATABASE_URL": make()}
    home: Path = tmp_path_factory.mktemp(f"payments-{request.param}")
    # Only auth and payments run: events for the absent consumers wait in the outboxes.
    deployment = start(home, ["auth", "payments"], database)
    try:
        yield System(deployment, deployment.create_admin())
    finally:
        deployment.stop()
