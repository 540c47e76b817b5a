"""The notifications service's own settings (services/notifications/settings.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02

from services.kit import config
from services.notifications import settings as notifications_settings
from services.notifications.push_keys import application_server_key, encode, vapid_private_key


def _load(environ: dict[str, str]) -> notifications_settings.NotificationsSettings:
    return config.load_with("notifications", notifications_settings.read, environ)[1]


def test_smtp_and_delivery_settings_come_from_the_environment_with_the_password_kept_out_of_reprs() -> None:
    own = _load(
        {
            "POLY_SMTP_HOST": "mail.example.com",
            "POLY_SMTP_PORT": "587",
            "POLY_SMTP_SECURITY": "STARTTLS",
            "POLY_SMTP_USERNAME": "poly",
            "POLY_SMTP_PASSWORD": "hunter2-but-longer",
            "POLY_WEBHOOK_ALLOW_PRIVATE": "true",
        }
    )
    smtp = own.smtp
    assert (smtp.host, smtp.port, smtp.security, smtp.username) == (
        "mail.example.com",
        587,
        "starttls",
        "poly",
    )
    assert "hunter2" not in repr(own)
    assert own.webhook_allow_private is True
    assert _load({}).webhook_allow_private is False, "private webhook targets are refused by default"


def test_bad_smtp_settings_are_listed_together() -> None:
    with pytest.raises(config.ConfigError) as caught:
        _load({"POLY_SMTP_SECURITY": "ssl3", "POLY_SMTP_USERNAME": "poly", "POLY_SMTP_PORT": "0"})
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "POLY_SMTP_PORT",
        "POLY_SMTP_SECURITY",
        "POLY_SMTP_USERNAME and POLY_SMTP_PASSWORD",
    ]


def test_the_password_can_come_from_a_mounted_file(tmp_path: Path) -> None:
    secret = tmp_path / "smtp-password"
    secret.write_text("from-a-file\n")
    own = _load({"POLY_SMTP_USERNAME": "poly", "POLY_SMTP_PASSWORD_FILE": str(secret)})
    assert own.smtp.password == "from-a-file"


def test_other_services_do_not_read_the_notifications_settings() -> None:
    # A bad SMTP setting is the notifications service's problem only.
    assert config.load("orders", {"POLY_SMTP_SECURITY": "ssl3"}).service == "orders"


@pytest.mark.parametrize(
    "sender",
    [
        "Poly, Inc <no-reply@poly.local>",
        "no address",
        "a@b.example, c@d.example",
        "Poly <a@b.example>\r\nBcc: x@y",
    ],
)
def test_a_from_setting_that_is_not_one_address_is_refused(sender: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        _load({"POLY_SMTP_FROM": sender})
    assert [p.split(":")[0] for p in caught.value.problems] == ["POLY_SMTP_FROM"]


@pytest.mark.parametrize(
    "sender", ['"Poly, Inc" <no-reply@poly.local>', "no-reply@poly.local", "Pölyservice <a@b.example>"]
)
def test_a_from_setting_that_is_one_address_is_kept(sender: str) -> None:
    assert _load({"POLY_SMTP_FROM": sender}).smtp.sender == sender


def test_texts_are_off_until_a_twilio_account_is_set() -> None:
    assert _load({}).twilio.enabled is False


def test_a_twilio_account_needs_its_token_sender_and_callback_and_keeps_the_token_out_of_reprs() -> None:
    with pytest.raises(config.ConfigError) as caught:
        _load({"POLY_TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "POLY_TWILIO_FROM": "12345"})
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "POLY_TWILIO_AUTH_TOKEN",
        "POLY_TWILIO_FROM",
        "POLY_TWILIO_CALLBACK_URL",
    ]
    own = _load(
        {
            "POLY_TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
            "POLY_TWILIO_AUTH_TOKEN": "tw-secret-token",
            "POLY_TWILIO_FROM": "MG" + "a" * 32,
            "POLY_TWILIO_CALLBACK_URL": "https://api.example.com/v1/channels/sms/events",
            "POLY_SMS_PER_RECIPIENT_PER_HOUR": "2",
        }
    )
    assert (own.twilio.enabled, own.twilio.per_recipient_per_hour) == (True, 2)
    assert "tw-secret-token" not in repr(own)


@pytest.mark.parametrize(
    "url", ["http://api.example.com/v1/channels/sms/events", "ftp://x", "/v1/channels/sms/events"]
)
def test_the_callback_url_is_https_unless_on_this_host(url: str) -> None:
    environ = {
        "POLY_TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "POLY_TWILIO_AUTH_TOKEN": "t",
        "POLY_TWILIO_FROM": "+15005550006",
        "POLY_TWILIO_CALLBACK_URL": url,
    }
    with pytest.raises(config.ConfigError) as caught:
        _load(environ)
    assert [p.split(":")[0] for p in caught.value.problems] == ["POLY_TWILIO_CALLBACK_URL"]


def _vapid_scalar() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return encode(key.private_numbers().private_value.to_bytes(32, "big"))


def test_pushes_are_off_until_a_vapid_key_is_set() -> None:
    assert _load({}).push.enabled is False


def test_a_vapid_key_needs_a_contact_and_stays_out_of_reprs_and_problems() -> None:
    scalar = _vapid_scalar()
    with pytest.raises(config.ConfigError) as caught:
        _load({"POLY_PUSH_VAPID_PRIVATE_KEY": scalar, "POLY_PUSH_VAPID_SUBJECT": "ops@example.com"})
    assert [p.split(":")[0] for p in caught.value.problems] == ["POLY_PUSH_VAPID_SUBJECT"]
    own = _load({"POLY_PUSH_VAPID_PRIVATE_KEY": scalar, "POLY_PUSH_VAPID_SUBJECT": "mailto:ops@example.com"})
    assert (own.push.enabled, own.push.ttl_seconds) == (True, 86400)
    assert scalar not in repr(own)


@pytest.mark.parametrize(
    "key",
    [
        "not-a-key",
        encode(b"\x01" * 31),
        # a key on another curve: PEM of secp384r1
        ec.generate_private_key(ec.SECP384R1())
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode(),
    ],
    ids=["garbage", "short", "p384"],
)
def test_a_vapid_key_that_is_not_p256_is_refused_without_showing_it(key: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        _load({"POLY_PUSH_VAPID_PRIVATE_KEY": key, "POLY_PUSH_VAPID_SUBJECT": "https://example.com"})
    assert [p.split(":")[0] for p in caught.value.problems] == ["POLY_PUSH_VAPID_PRIVATE_KEY"]
    shown = "\n".join(caught.value.problems)
    assert not any(line in shown for line in key.splitlines() if len(line) > 8 and "-----" not in line)


def test_a_pem_vapid_key_from_a_mounted_file_gives_the_same_public_key(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "vapid.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    own = _load(
        {"POLY_PUSH_VAPID_PRIVATE_KEY_FILE": str(pem), "POLY_PUSH_VAPID_SUBJECT": "mailto:a@example.com"}
    )
    assert application_server_key(own.push.vapid_private_key) == application_server_key(key)


@pytest.mark.parametrize(
    "subject", ["https://x.example/", "mailto:ops@example", "https://x.example:8443", "a@b.io"]
)
def test_a_vapid_subject_the_signer_would_refuse_stops_the_start(subject: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        _load({"POLY_PUSH_VAPID_PRIVATE_KEY": _vapid_scalar(), "POLY_PUSH_VAPID_SUBJECT": subject})
    assert [p.split(":")[0] for p in caught.value.problems] == ["POLY_PUSH_VAPID_SUBJECT"]


@pytest.mark.parametrize("subject", ["mailto:ops@example.com", "https://poly.example.com"])
def test_an_accepted_vapid_subject_is_one_the_signer_takes(subject: str) -> None:
    own = _load({"POLY_PUSH_VAPID_PRIVATE_KEY": _vapid_scalar(), "POLY_PUSH_VAPID_SUBJECT": subject})
    signer = Vapid02(vapid_private_key(own.push.vapid_private_key))
    assert signer.sign({"aud": "https://push.example.com", "sub": own.push.subject})["Authorization"]


def test_an_encrypted_pem_vapid_key_is_a_named_problem() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    with pytest.raises(config.ConfigError) as caught:
        _load(
            {"POLY_PUSH_VAPID_PRIVATE_KEY": key.decode(), "POLY_PUSH_VAPID_SUBJECT": "mailto:a@example.com"}
        )
    assert [p.split(":")[0] for p in caught.value.problems] == ["POLY_PUSH_VAPID_PRIVATE_KEY"]
