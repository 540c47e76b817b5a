"""`poly migrate` and `poly serve`: the commands a container runs (deploy/Dockerfile)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from services.kit import config
from tests.support.env import PYTHON, ROOT, make_certs, poly_environ, process_environ, settings_for
from tests.support.identity import CHEAP_ARGON2
from tests.support.processes import Process, health_check, run_module


def _poly(environ: dict[str, str], *args: str) -> tuple[int, str, str]:
    done = run_module("services.cli", environ, *args, stdin="")
    return done.returncode, done.stdout, done.stderr


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.slow
def test_migrate_all_brings_every_database_to_its_newest_revision_and_again_changes_nothing(
    tmp_path: Path,
) -> None:
    environ = poly_environ(tmp_path)
    for _ in range(2):
        status, out, err = _poly(environ, "migrate", "all")
        assert status == 0, err
        assert out.splitlines() == [f"{service}: migrated" for service in config.SERVICES]
    for service in config.SERVICES:
        tables = _tables(settings_for(service, environ).db.url)
        assert f"alembic_version_{service}" in tables and "bus_outbox" in tables, tables


@pytest.mark.slow
@pytest.mark.postgres
def test_migrate_one_service_on_postgresql_leaves_the_others_alone(tmp_path: Path, postgres_url: str) -> None:
    environ = poly_environ(
        tmp_path, POLY_ORDERS_DATABASE_URL=postgres_url, POLY_USERS_DATABASE_URL=postgres_url
    )
    status, out, err = _poly(environ, "migrate", "orders", "orders")  # named twice: migrated once
    assert (status, out) == (0, "orders: migrated\n"), err
    tables = _tables(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
    assert "alembic_version_orders" in tables and "alembic_version_users" not in tables


@pytest.mark.slow
def test_migrate_names_the_database_it_cannot_reach_and_keeps_its_password_out(tmp_path: Path) -> None:
    url = "postgresql://poly:s3cret-pass@127.0.0.1:1/orders"
    status, _, err = _poly(poly_environ(tmp_path, POLY_ORDERS_DATABASE_URL=url), "migrate", "orders")
    assert status == 1
    assert (
        "poly migrate: orders: cannot open or migrate database" in err and "POLY_ORDERS_DATABASE_URL" in err
    )
    assert "s3cret-pass" not in err


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["migrate"], "required: SERVICE"),
        (["migrate", "billing"], "invalid choice"),
        (["serve"], "required"),
        (["status", "billing"], "unknown component 'billing'"),
    ],
    ids=["migrate-nothing", "migrate-unknown", "serve-nothing", "status-unknown"],
)
def test_a_bad_deploy_command_exits_2(tmp_path: Path, args: list[str], said: str) -> None:
    status, _, err = _poly(poly_environ(tmp_path), *args)
    assert status == 2 and said in err, err


@pytest.mark.slow
def test_serve_runs_a_service_that_status_reports_until_sigterm_then_drains_and_exits_0(
    tmp_path: Path,
) -> None:
    make_certs(tmp_path / "certs")
    environ = poly_environ(tmp_path, **CHEAP_ARGON2)
    served = Process.module("services.cli", environ, "serve", "users")
    try:
        cli = settings_for("cli", environ)
        assert health_check(cli, cli.peers["users"]) == "SERVING", served.output()
        # A container's health check asks for its own component only.
        status, out, err = _poly(environ, "status", "users")
        assert status == 0 and out.split()[::2] == ["users", "SERVING"], out + err
        status, out, err = _poly(environ, "status", "users", "orders")
        assert status == 1 and "not SERVING: orders" in err and len(out.splitlines()) == 2, out + err
        served.signal(signal.SIGTERM)
        assert served.wait(30) == 0, served.output()
        assert '"message": "stopped"' in served.output() or "stopped" in served.output()
    finally:
        served.stop()


@pytest.mark.slow
@pytest.mark.postgres
def test_replicas_migrating_one_database_at_once_take_turns(tmp_path: Path, postgres_url: str) -> None:
    # Init containers of several replicas run `poly migrate` together against one database.
    environ = process_environ(poly_environ(tmp_path, POLY_ORDERS_DATABASE_URL=postgres_url))
    racing = [
        subprocess.Popen(
            [PYTHON, "-m", "services.cli", "migrate", "orders"],
            env=environ,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outcomes = [(process.wait(120), *process.communicate()) for process in racing]
    assert all(status == 0 for status, _, _ in outcomes), outcomes
    engine = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version_orders")).all()
    finally:
        engine.dispose()
    assert len(versions) == 1
