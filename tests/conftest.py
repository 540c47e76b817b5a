from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.support.env import make_certs


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A development CA and a certificate per component, shared by the whole session."""
    return make_certs(tmp_path_factory.mktemp("certs"))


def _required_url(variable: str) -> str:
    url = os.environ.get(variable)
    if url:
        return url
    if os.environ.get("CI") == "true":
        pytest.fail(f"{variable} must be set under CI=true; .ci/run points it at the local server")
    pytest.skip(f"{variable} is not set")


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """PostgreSQL server URL (POLY_TEST_POSTGRES_URL); never skipped under CI=true."""
    return _required_url("POLY_TEST_POSTGRES_URL")


@pytest.fixture(scope="module")
def postgres_databases(postgres_admin_url: str) -> Iterator[Callable[[], str]]:
    """Makes fresh, empty databases on the test PostgreSQL server; dropped after the module."""
    admin = create_engine(
        make_url(postgres_admin_url).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    made: list[str] = []

    def make() -> str:
        name = f"poly_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        url = make_url(postgres_admin_url).set(drivername="postgresql+psycopg", database=name)
        return url.render_as_string(hide_password=False)

    try:
        yield make
        with admin.connect() as connection:
            for name in made:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture
def postgres_url(postgres_databases: Callable[[], str]) -> str:
    """A fresh, empty database on the test PostgreSQL server, dropped afterwards."""
    return postgres_databases()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database of each kind a service runs on: a SQLite file, then a PostgreSQL
    database (``postgres_url``)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'service.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """RabbitMQ URL (POLY_TEST_AMQP_URL); never skipped under CI=true."""
    return _required_url("POLY_TEST_AMQP_URL")
