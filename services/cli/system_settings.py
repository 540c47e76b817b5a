"""What the launcher reads of the system it runs: its own kit settings, every component's own
settings checked (so `poly up` refuses a bad environment at once), and the parts of two
services' own settings it acts on. `poly up` opens the development mailbox where the
notifications service sends email; `poly up` and `poly certs` create the key that seals the
auth service's signing keys. Read with one `config.Reader`, so every problem shows at once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway import config as edge_config
from services.auth import settings as auth_settings
from services.kit import config
from services.kit.types import Environ
from services.notifications import settings as notifications_settings
from services.notifications.settings import SmtpSettings
from services.payments import settings as payments_settings

__all__ = ["SystemSettings", "load"]


@dataclass(frozen=True)
class SystemSettings:
    settings: config.Settings
    """The launcher's own (component ``cli``)."""
    smtp: SmtpSettings
    """Where the notifications service sends email."""
    key_encryption_key_file: Path
    """The auth service's key that seals its signing keys."""


def load(environ: Environ | None = None) -> SystemSettings:
    """Raises `config.ConfigError` listing every problem."""

    def read(env: config.Reader, settings: config.Settings) -> tuple[SmtpSettings, Path]:
        # Every component's own settings are read, so `poly up` refuses a bad environment
        # before it starts anything, listing every problem, not one per child that exits.
        payments_settings.read(env, settings)
        edge_config.read_settings(env, settings)
        smtp = notifications_settings.read(env, settings).smtp
        return smtp, auth_settings.read(env, settings).key_encryption_key_file

    settings, (smtp, key_file) = config.load_with("cli", read, environ)
    return SystemSettings(settings, smtp, key_file)
