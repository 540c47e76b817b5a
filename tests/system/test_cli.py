"""The `poly` command itself: certificates, status of a stopped system, configuration errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from services.kit import config
from tests.support.env import poly_environ
from tests.support.processes import run_module

pytestmark = pytest.mark.slow


def _poly(environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_module("services.cli", environ, *args)


def test_certs_writes_once_keeps_after_and_force_rotates_the_components(tmp_path: Path) -> None:
    environ = poly_environ(tmp_path)
    first = _poly(environ, "certs")
    assert first.returncode == 0, first.stderr
    written = [line for line in first.stdout.splitlines() if line.startswith("wrote")]
    # The CA, one certificate per component, and the auth service's key-encryption key.
    assert len(written) == len(config.COMPONENTS) + 2
    encryption_key = tmp_path / "secrets" / "signing-key-encryption.key"
    assert encryption_key.stat().st_mode & 0o777 == 0o600
    key_bytes = encryption_key.read_bytes()
    ca = (tmp_path / "certs" / "ca.crt").read_bytes()
    cli = (tmp_path / "certs" / "cli.crt").read_bytes()

    second = _poly(environ, "certs")
    assert second.returncode == 0
    assert "wrote" not in second.stdout
    assert second.stdout.count("kept") == len(config.COMPONENTS) + 1
    assert (tmp_path / "certs" / "cli.crt").read_bytes() == cli

    forced = _poly(environ, "certs", "--force")
    assert forced.returncode == 0
    assert forced.stdout.count("wrote") == len(config.COMPONENTS)
    assert encryption_key.read_bytes() == key_bytes, "never replaced: it opens the stored signing keys"
    assert (tmp_path / "certs" / "ca.crt").read_bytes() == ca
    assert (tmp_path / "certs" / "cli.crt").read_bytes() != cli


def test_status_of_a_stopped_system_is_unreachable_and_fails(tmp_path: Path) -> None:
    environ = poly_environ(tmp_path)
    assert _poly(environ, "certs").returncode == 0
    result = _poly(environ, "status")
    assert result.returncode == 1
    assert result.stdout.count("DOWN (nothing listens there)") == len(config.SERVICES) + 1  # and the edge


def test_a_bad_environment_is_refused_with_every_problem(tmp_path: Path) -> None:
    environ = poly_environ(tmp_path, POLY_GRACE_SECONDS="soon", POLY_LOG_LEVEL="chatty")
    result = _poly(environ, "status")
    assert result.returncode == 2
    assert "POLY_GRACE_SECONDS" in result.stderr and "POLY_LOG_LEVEL" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_service_with_a_bad_environment_exits_2_without_a_traceback(tmp_path: Path) -> None:
    environ = poly_environ(tmp_path, POLY_ORDERS_PORT="http")
    result = run_module("services.orders", environ)
    assert result.returncode == 2
    assert "POLY_ORDERS_PORT: expected an integer" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_service_without_certificates_exits_1_with_a_hint(tmp_path: Path) -> None:
    result = run_module("services.users", poly_environ(tmp_path))
    assert result.returncode == 1
    assert "poly certs" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_service_whose_database_refuses_exits_1_with_one_line(tmp_path: Path) -> None:
    environ = poly_environ(tmp_path, POLY_USERS_DATABASE_URL="postgresql://poly:hunter2@127.0.0.1:1/users")
    assert _poly(environ, "certs").returncode == 0
    result = run_module("services.users", environ)
    assert result.returncode == 1
    assert "cannot open or migrate database" in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


def test_status_without_certificates_says_how_to_make_them(tmp_path: Path) -> None:
    result = _poly(poly_environ(tmp_path), "status")
    assert result.returncode == 1  # a missing file is a failure; 2 is for a bad command line or setting
    assert "poly certs" in result.stderr and "Traceback" not in result.stderr


def test_admin_create_without_a_terminal_or_password_stdin_says_what_to_pass(tmp_path: Path) -> None:
    environ = poly_environ(tmp_path)
    assert _poly(environ, "certs").returncode == 0
    # stdin is a pipe, not a terminal; the process has no controlling terminal either.
    result = run_module("services.cli", environ, "admin", "create", "--email", "root@example.com", stdin="")
    assert result.returncode == 2, result.stderr
    assert "--password-stdin" in result.stderr
    assert "Traceback" not in result.stderr
