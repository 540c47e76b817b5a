"""Signing keys sealed at rest."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import jwt
import pytest

from services.auth import keys

NOW = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)


def test_a_sealed_key_opens_only_with_its_encryption_key_and_row(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "kek"
    assert keys.ensure_key_encryption_key(path) and not keys.ensure_key_encryption_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    encryption_key = keys.load_key_encryption_key(path)
    sealed = keys.new_key(encryption_key, NOW)
    assert sealed.public_key not in sealed.sealed_private_key
    signing = keys.unseal(sealed, encryption_key)
    token = jwt.encode({"sub": "x"}, signing.private_key, algorithm="EdDSA", headers={"kid": sealed.kid})
    public = jwt.PyJWK(keys.jwk(sealed)).key
    assert jwt.decode(token, public, algorithms=["EdDSA"]) == {"sub": "x"}
    with pytest.raises(keys.KeyEncryptionError):
        keys.unseal(sealed, b"\0" * 32)
    with pytest.raises(keys.KeyEncryptionError):  # moved to another kid: the associated data differs
        keys.unseal(dataclasses.replace(sealed, kid="other"), encryption_key)


@pytest.mark.parametrize("content", ["", "short", "!!!not-base64!!!"], ids=["empty", "short", "junk"])
def test_a_malformed_encryption_key_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "kek"
    path.write_text(content)
    with pytest.raises(keys.KeyEncryptionError):
        keys.load_key_encryption_key(path)


def test_a_missing_encryption_key_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(keys.KeyEncryptionError, match="poly certs"):
        keys.load_key_encryption_key(tmp_path / "absent")
