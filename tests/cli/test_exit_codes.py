"""`poly` exits 0 on success, 1 on failure, 2 on usage; every error says what to do next."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from services.kit import config, db
from services.orders.__main__ import SERVICE as ORDERS
from tests.support.env import PYTHON, ROOT, poly_environ, process_environ
from tests.support.processes import run_module


def _poly(environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_module("services.cli", environ, *args, stdin="")


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "required: COMMAND"),
        (["bus", "status", "billing"], "invalid choice: 'billing'"),
        (["migration", "orders"], "required: -m/--message"),
        (["completion", "fish"], "invalid choice: 'fish'"),
    ],
    ids=["unknown-command", "no-command", "unknown-service", "missing-option", "unknown-shell"],
)
def test_a_bad_command_line_exits_2(tmp_path: Path, args: list[str], said: str) -> None:
    result = _poly(poly_environ(tmp_path), *args)
    assert result.returncode == 2
    assert said in result.stderr and "usage: poly" in result.stderr


def test_a_bad_environment_exits_2_naming_the_variable_and_the_table(tmp_path: Path) -> None:
    result = _poly(poly_environ(tmp_path, POLY_STATUS_PORT="1", POLY_AUTH_PORT="http"), "status")
    assert result.returncode == 2
    assert "POLY_AUTH_PORT: expected an integer" in result.stderr
    assert "README.md, section Configuration" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_without_certificates_exits_1_saying_how_to_make_them(tmp_path: Path) -> None:
    result = _poly(poly_environ(tmp_path), "status")
    assert result.returncode == 1
    assert f"no certificate at {tmp_path / 'certs' / 'cli.crt'}" in result.stderr
    assert "run `poly certs` (or `poly up`, which creates them)" in result.stderr


def test_status_with_nothing_running_exits_1_saying_how_to_start_it(tmp_path: Path, certs: Path) -> None:
    result = _poly(poly_environ(tmp_path, POLY_TLS_DIR=str(certs)), "status")
    assert result.returncode == 1
    assert result.stdout.count("DOWN (nothing listens there)") == 6
    assert "not SERVING: auth, users, orders, payments, notifications, gateway" in result.stderr
    assert "start the system with `poly up`" in result.stderr


@pytest.mark.slow
def test_the_outbox_of_a_service_never_started_exits_1_saying_to_start_it(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()  # an empty SQLite database: the orders service never migrated it
    result = _poly(poly_environ(tmp_path), "bus", "status", "orders")
    assert result.returncode == 1
    assert "cannot read the orders database (OperationalError: no such table" in result.stderr
    assert "if the service never ran, start the orders service once (`poly up`)" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_admin_over_a_database_never_migrated_names_poly_db_migrate(tmp_path: Path) -> None:
    environ = poly_environ(tmp_path, POLY_DB_MIGRATE="false")  # this command would migrate it otherwise
    result = _poly(environ, "admin", "create", "--email", "root@example.com", "--password-stdin")
    assert result.returncode == 1
    assert "start the auth service once with POLY_DB_MIGRATE=true (it is false)" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_database_that_refuses_exits_1_naming_its_variable(tmp_path: Path) -> None:
    url = "postgresql://poly:hunter2@127.0.0.1:1/orders"
    result = _poly(poly_environ(tmp_path, POLY_ORDERS_DATABASE_URL=url), "bus", "dead", "orders")
    assert result.returncode == 1
    assert "cannot open or migrate database postgresql://poly:***@127.0.0.1:1/orders" in result.stderr
    assert "check POLY_ORDERS_DATABASE_URL" in result.stderr and "README.md" in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_keys_without_the_key_encryption_key_exits_1_saying_how_to_make_it(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    result = _poly(poly_environ(tmp_path), "keys", "list")
    assert result.returncode == 1
    assert "`poly certs` creates one" in result.stderr
    assert "POLY_AUTH_KEY_ENCRYPTION_KEY_FILE" in result.stderr and "Traceback" not in result.stderr


def test_certs_over_half_a_ca_exits_1_saying_how_to_repair_it(tmp_path: Path) -> None:
    environ = poly_environ(tmp_path)
    assert _poly(environ, "certs").returncode == 0
    (tmp_path / "certs" / "ca.key").unlink()
    result = _poly(environ, "certs")
    assert result.returncode == 1
    assert "restore the other, or remove the whole directory to start a new CA" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("email", "stdin"),
    [
        (b"ada@example.com", b"\xff\xfe-not-utf-8-password\n"),
        (b"\xffada@example.com", b"violet-harbour-lantern-42\n"),
    ],
    ids=["password", "email"],
)
@pytest.mark.parametrize("encoding", ["utf-8", "ascii"], ids=["utf8-locale", "c-locale"])
def test_admin_input_that_is_not_utf8_exits_2_without_a_traceback(
    tmp_path: Path, email: bytes, stdin: bytes, encoding: str
) -> None:
    environ = {**process_environ(poly_environ(tmp_path)), "PYTHONIOENCODING": f"{encoding}:surrogateescape"}
    if encoding == "utf-8":
        environ["PYTHONIOENCODING"] = "utf-8"
    result = subprocess.run(
        [PYTHON, "-m", "services.cli", "admin", "create", "--email", email, "--password-stdin"],
        input=stdin,
        capture_output=True,
        env=environ,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, stderr
    assert "is not UTF-8 text" in stderr and "Traceback" not in stderr


@pytest.mark.slow
def test_a_crlf_password_line_is_the_password_without_its_line_ending(tmp_path: Path) -> None:
    environ = poly_environ(tmp_path)
    created = run_module(
        "services.cli",
        environ,
        "admin",
        "create",
        "--email",
        "crlf@example.com",
        "--password-stdin",
        stdin="violet-harbour-lantern-42\r\n",
    )
    assert created.returncode == 0, created.stderr
    again = run_module(
        "services.cli",
        environ,
        "admin",
        "create",
        "--email",
        "crlf@example.com",
        "--password-stdin",
        stdin="",
    )
    assert again.returncode == 0 and "password unchanged" in again.stdout, again.stdout + again.stderr


def test_event_goes_only_with_redrive(tmp_path: Path) -> None:
    result = _poly(poly_environ(tmp_path), "bus", "status", "orders", "--event", "x")
    assert result.returncode == 2 and "--event goes with `poly bus redrive`" in result.stderr


@pytest.mark.slow
def test_redrive_of_an_event_that_is_no_dead_letter_exits_1(tmp_path: Path) -> None:
    environ = poly_environ(tmp_path)
    db.connect(config.load("orders", environ).db, migrations=ORDERS.migrations).dispose()
    result = _poly(environ, "bus", "redrive", "orders", "--event", "no-such-event")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no dead letter with id no-such-event; `poly bus dead <service>` lists them" in result.stderr
