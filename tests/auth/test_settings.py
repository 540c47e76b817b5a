"""The auth service's own settings (services/auth/settings.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.auth import settings as auth_settings
from services.kit import config


def _load(environ: dict[str, str]) -> auth_settings.IdentitySettings:
    return config.load_with("auth", auth_settings.read, environ)[1]


def test_the_argon2_memory_budget_must_hold_one_hash() -> None:
    assert _load({}).argon2_memory_budget_kib == 262144
    found = _load({"POLY_AUTH_ARGON2_MEMORY_KIB": "32768", "POLY_AUTH_ARGON2_MEMORY_BUDGET_KIB": "100000"})
    assert found.argon2_memory_budget_kib == 100000
    with pytest.raises(config.ConfigError) as caught:
        _load({"POLY_AUTH_ARGON2_MEMORY_BUDGET_KIB": "32768"})  # the cost is 65536
    assert [p.split(":")[0] for p in caught.value.problems] == ["POLY_AUTH_ARGON2_MEMORY_BUDGET_KIB"]


def test_the_key_encryption_key_lives_under_the_state_directory_unless_named(tmp_path: Path) -> None:
    default = _load({"POLY_HOME": str(tmp_path)}).key_encryption_key_file
    assert default == tmp_path / "secrets" / "signing-key-encryption.key"
    named = _load({"POLY_AUTH_KEY_ENCRYPTION_KEY_FILE": "/var/run/poly/secrets/kek"})
    assert named.key_encryption_key_file == Path("/var/run/poly/secrets/kek")


def test_the_password_grant_is_on_unless_turned_off() -> None:
    assert _load({}).password_grant
    assert not _load({"POLY_AUTH_PASSWORD_GRANT": "false"}).password_grant


def test_token_lifetimes_are_bounded() -> None:
    with pytest.raises(config.ConfigError) as caught:
        _load({"POLY_AUTH_ACCESS_TOKEN_SECONDS": "5", "POLY_AUTH_REFRESH_TOKEN_SECONDS": "1"})
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "POLY_AUTH_ACCESS_TOKEN_SECONDS",
        "POLY_AUTH_REFRESH_TOKEN_SECONDS",
    ]
