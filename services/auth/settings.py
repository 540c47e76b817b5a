"""The auth service's own settings: token lifetimes, the key that seals signing keys, argon2
and login throttling (what every service accepts of a token is the kit's `AuthSettings`).
Read with the kit's `config.Reader`; see ``services/notifications/settings.py``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: the domain imports these settings, and knows no kit config
    from services.kit.config import Reader, Settings

__all__ = ["IdentitySettings", "read"]


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    access_token_seconds: int = 900
    refresh_token_seconds: int = 30 * 24 * 3600
    key_encryption_key_file: Path = Path(".poly/secrets/signing-key-encryption.key")
    """The 32-byte key (base64url) that encrypts signing keys at rest."""
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 4
    argon2_memory_budget_kib: int = 262144
    """Memory the auth service may spend on argon2 at once: it runs at most
    ``argon2_memory_budget_kib // argon2_memory_kib`` hashes or verifications concurrently."""
    login_failures_per_account: int = 5
    login_failures_per_address: int = 20
    login_window_seconds: float = 900.0
    """Failed logins counted per account and per client address within this window."""
    registrations_per_address: int = 20
    """Registrations (taken emails included) allowed per client address within the login window."""
    password_grant: bool = True
    """Whether Login exchanges an email and password for tokens (the OAuth password grant, which
    OAuth 2.1 removes: the app sees the password). On for development; deployments turn it off
    and sign people in through the authorization endpoint's page."""


def read(env: Reader, settings: Settings) -> IdentitySettings:
    key_file = settings.home / "secrets" / "signing-key-encryption.key"
    found = IdentitySettings(
        access_token_seconds=env.integer("POLY_AUTH_ACCESS_TOKEN_SECONDS", 900, low=30, high=86400),
        refresh_token_seconds=env.integer(
            "POLY_AUTH_REFRESH_TOKEN_SECONDS", 30 * 24 * 3600, low=60, high=365 * 24 * 3600
        ),
        key_encryption_key_file=Path(env.text("POLY_AUTH_KEY_ENCRYPTION_KEY_FILE", str(key_file))),
        argon2_time_cost=env.integer("POLY_AUTH_ARGON2_TIME_COST", 3, low=1, high=100),
        argon2_memory_kib=env.integer("POLY_AUTH_ARGON2_MEMORY_KIB", 65536, low=1024, high=4 * 1024 * 1024),
        argon2_parallelism=env.integer("POLY_AUTH_ARGON2_PARALLELISM", 4, low=1, high=64),
        argon2_memory_budget_kib=env.integer(
            "POLY_AUTH_ARGON2_MEMORY_BUDGET_KIB", 262144, low=1024, high=256 * 1024 * 1024
        ),
        login_failures_per_account=env.integer("POLY_AUTH_LOGIN_FAILURES_PER_ACCOUNT", 5, low=1, high=1000),
        login_failures_per_address=env.integer(
            "POLY_AUTH_LOGIN_FAILURES_PER_ADDRESS", 20, low=1, high=100000
        ),
        login_window_seconds=env.number("POLY_AUTH_LOGIN_WINDOW_SECONDS", 900.0, low=1.0, high=86400.0),
        registrations_per_address=env.integer(
            "POLY_AUTH_REGISTRATIONS_PER_ADDRESS", 20, low=1, high=1_000_000
        ),
        password_grant=env.flag("POLY_AUTH_PASSWORD_GRANT", True),
    )
    if found.argon2_memory_budget_kib < found.argon2_memory_kib:
        env.problems.append(
            "POLY_AUTH_ARGON2_MEMORY_BUDGET_KIB: must be at least POLY_AUTH_ARGON2_MEMORY_KIB "
            f"({found.argon2_memory_kib}), got {found.argon2_memory_budget_kib}"
        )
    return found
