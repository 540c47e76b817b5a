"""What the launcher reads of the system (services/cli/system_settings.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cli import system_settings
from services.kit import config


def test_the_launcher_reads_where_mail_goes_and_where_the_signing_key_sealer_lives(tmp_path: Path) -> None:
    found = system_settings.load({"POLY_HOME": str(tmp_path), "POLY_SMTP_PORT": "2525"})
    assert found.settings.service == "cli" and found.smtp.port == 2525
    assert found.key_encryption_key_file == tmp_path / "secrets" / "signing-key-encryption.key"


def test_every_components_own_settings_are_checked_before_poly_up_starts_anything(tmp_path: Path) -> None:
    environ = {
        "POLY_HOME": str(tmp_path),
        "POLY_PAYMENTS_DEFAULT_CURRENCY": "EURO",
        "POLY_GATEWAY_TRUSTED_PROXIES": "proxy.internal",
        "POLY_AUTH_ARGON2_MEMORY_BUDGET_KIB": "2048",
        "POLY_SMTP_SECURITY": "ssl3",
    }
    with pytest.raises(config.ConfigError) as refused:
        system_settings.load(environ)
    named = {problem.split(":")[0] for problem in refused.value.problems}
    assert named == {
        "POLY_PAYMENTS_DEFAULT_CURRENCY",
        "POLY_GATEWAY_TRUSTED_PROXIES",
        "POLY_AUTH_ARGON2_MEMORY_BUDGET_KIB",
        "POLY_SMTP_SECURITY",
    }
