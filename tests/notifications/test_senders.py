"""The email sender against a real SMTP server (aiosmtpd on 127.0.0.1): connections are
reused between messages, a connection the server dropped is replaced, not a failure, what
arrives reads back as sent (non-ASCII text included), a header injection is refused, a body
cannot smuggle a second message, and STARTTLS, TLS and login work with the development CA
(a wrong password or an untrusted certificate sends nothing)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from services.notifications.domain import EMAIL, Delivery, Outgoing
from services.notifications.senders import EmailSender, Result
from services.notifications.settings import SmtpSettings
from tests.support.mailbox import mailbox

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _outgoing(number: int) -> Outgoing:
    delivery = Delivery(
        id=f"d{number}",
        recipient="users/u1",
        channel=EMAIL,
        template="templates/order-paid",
        event_type="poly.events.v1.OrderPaid",
        event_id=f"e{number}",
        destination="ada@example.com",
        webhook="",
        state="PENDING",
        attempts=1,
        last_error="",
        next_attempt_time=None,
        create_time=NOW,
        update_time=NOW,
    )
    return Outgoing(delivery, {"subject": f"Order {number} paid", "text": "Thank you."})


def test_messages_in_a_row_share_one_connection() -> None:
    with mailbox() as box:
        sender = EmailSender(SmtpSettings(host="127.0.0.1", port=box.port))

        async def send_all() -> list[bool]:
            try:
                return [(await sender.send(_outgoing(n))).sent for n in range(5)]
            finally:
                await sender.close()

        assert asyncio.run(send_all()) == [True] * 5
        assert [m["Subject"] for m in box.messages] == [f"Order {n} paid" for n in range(5)]
        assert len(set(box.peers)) == 1


def test_a_connection_the_server_dropped_is_replaced() -> None:
    with mailbox(idle_timeout=0.2) as box:
        sender = EmailSender(SmtpSettings(host="127.0.0.1", port=box.port))

        async def send_with_a_pause() -> list[bool]:
            try:
                first = await sender.send(_outgoing(1))
                await asyncio.sleep(0.6)  # the server times the idle connection out
                second = await sender.send(_outgoing(2))
                return [first.sent, second.sent]
            finally:
                await sender.close()

        assert asyncio.run(send_with_a_pause()) == [True, True]
        assert len(box.messages) == 2 and len(set(box.peers)) == 2


def test_a_refused_recipient_is_a_permanent_failure_and_the_next_message_still_goes() -> None:
    with mailbox() as box:
        sender = EmailSender(SmtpSettings(host="127.0.0.1", port=box.port))

        async def refused_then_accepted() -> list[tuple[bool, bool]]:
            try:
                box.reply = "554 Transaction failed"
                refused = await sender.send(_outgoing(1))
                box.reply = "250 OK"
                accepted = await sender.send(_outgoing(2))
                return [(refused.sent, refused.permanent), (accepted.sent, accepted.permanent)]
            finally:
                await sender.close()

        assert asyncio.run(refused_then_accepted()) == [(False, True), (True, False)]
        assert [m["Subject"] for m in box.messages] == ["Order 2 paid"]


def _send(
    box_port: int, outgoing: Outgoing, sender: str = "Polyservice <no-reply@poly.local>"
) -> tuple[bool, bool, str]:
    email = EmailSender(SmtpSettings(host="127.0.0.1", port=box_port, sender=sender))

    async def once() -> tuple[bool, bool, str]:
        try:
            result = await email.send(outgoing)
            return result.sent, result.permanent, result.error
        finally:
            await email.close()

    return asyncio.run(once())


def test_what_arrives_reads_back_as_sent_non_ascii_included() -> None:
    content = {
        "subject": "Bestellung 7 bezahlt \u2013 danke, Zoë",
        "text": "Hallo Zoë,\nbezahlt: 9,90 €\n",
        "html": "<p>Hallo Zoë, bezahlt: 9,90 €</p>",
    }
    with mailbox() as box:
        assert _send(
            box.port, Outgoing(_outgoing(7).delivery, content), "Pölyservice <no-reply@poly.local>"
        ) == (
            True,
            False,
            "",
        )
    [mail] = box.messages
    assert (mail["From"], mail["To"], mail["Subject"]) == (
        "Pölyservice <no-reply@poly.local>",
        "ada@example.com",
        content["subject"],
    )
    assert (mail["Message-ID"], mail["X-Poly-Delivery"], mail["X-Poly-Event-Id"]) == (
        "<d7@poly.local>",
        "deliveries/d7",
        "e7",
    )
    assert mail.get_body(("plain",)).get_content() == content["text"]  # type: ignore[union-attr]
    assert mail.get_body(("html",)).get_content().strip() == content["html"]  # type: ignore[union-attr]


def test_a_text_only_email_is_one_plain_part() -> None:
    with mailbox() as box:
        assert _send(box.port, _outgoing(3))[0]
    [mail] = box.messages
    assert (mail.get_content_type(), mail.get_content().strip()) == ("text/plain", "Thank you.")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subject", "Paid\r\nBcc: victim@example.com"),
        ("destination", "ada@example.com\nBcc: victim@example.com"),
        ("sender", "Poly <no-reply@poly.local>\r\nBcc: victim@example.com"),
        ("subject", "Paid\x0cnow"),
        ("subject", "Paid\u2028Bcc: victim@example.com"),
    ],
)
def test_a_header_injection_is_refused_for_good_and_nothing_is_sent(field: str, value: str) -> None:
    outgoing, sender = _outgoing(4), "Polyservice <no-reply@poly.local>"
    if field == "subject":
        outgoing = Outgoing(outgoing.delivery, {**outgoing.content, "subject": value})
    elif field == "destination":
        outgoing = Outgoing(dataclasses.replace(outgoing.delivery, destination=value), outgoing.content)
    else:
        sender = value
    with mailbox() as box:
        sent, permanent, error = _send(box.port, outgoing, sender)
    assert (sent, permanent) == (False, True) and "line break" in error
    assert box.messages == []


# -- TLS and authentication ----------------------------------------------------------------

USER, PASSWORD = "poly-mailer", "s3cret-Passw0rd"


def _server_tls(certs: Path) -> ssl.SSLContext:
    """The server side: the development CA's certificate for ``localhost``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / "notifications.crt", certs / "notifications.key")
    return context


def _authenticator(
    server: object, session: object, envelope: object, mechanism: str, auth_data: object
) -> AuthResult:
    good = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=good, handled=False)


def _secured_send(port: int, certs: Path | None, security: str, password: str = PASSWORD) -> Result:
    settings = SmtpSettings(
        host="localhost",
        port=port,
        security=security,
        username=USER,
        password=password,
        ca_file=certs / "ca.crt" if certs else None,
        timeout_seconds=5.0,
    )
    email = EmailSender(settings)

    async def once() -> Result:
        try:
            return await email.send(_outgoing(9))
        finally:
            await email.close()

    return asyncio.run(once())


def _starttls_box(certs: Path) -> Any:
    return mailbox(
        tls_context=_server_tls(certs),
        require_starttls=True,
        authenticator=_authenticator,
        auth_require_tls=True,
    )


def test_starttls_then_login_delivers_over_an_encrypted_authenticated_session(certs: Path) -> None:
    with _starttls_box(certs) as box:
        assert _secured_send(box.port, certs, "starttls") == Result()
    assert box.secured == [(True, True)]
    assert [m["Message-ID"] for m in box.messages] == ["<d9@poly.local>"]


def test_tls_from_the_start_delivers_over_an_encrypted_session(certs: Path) -> None:
    # aiosmtpd counts only STARTTLS as TLS for AUTH: the whole session is TLS here anyway.
    with mailbox(ssl_context=_server_tls(certs), authenticator=_authenticator, auth_require_tls=False) as box:
        assert _secured_send(box.port, certs, "tls") == Result()
    assert box.secured == [(True, True)]


def test_a_wrong_password_is_a_retried_failure_and_nothing_is_sent(certs: Path) -> None:
    with _starttls_box(certs) as box:
        result = _secured_send(box.port, certs, "starttls", password="wrong")
    assert (result.sent, result.permanent, result.error) == (False, False, "SMTP 535 authentication failed")
    assert PASSWORD not in result.error and "wrong" not in result.error
    assert box.messages == []


def test_a_server_certificate_the_ca_file_does_not_trust_is_refused(certs: Path) -> None:
    """Without POLY_SMTP_CA_FILE the system's CAs decide, and none of them issued the
    development certificate: the client refuses the server before it sends the password."""
    with _starttls_box(certs) as box:
        result = _secured_send(box.port, None, "starttls")
    assert (result.sent, result.permanent) == (False, False) and result.error.startswith("SMTP SSL")
    assert box.messages == []


def test_a_body_cannot_smuggle_a_second_message() -> None:
    """SMTP smuggling: a body holding an end-of-data sequence (with bare LF or CR too) and
    a new transaction arrives as one message with that text intact."""
    smuggled = (
        "Thanks.\r\n.\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
        "Subject: forged\r\n\r\nforged\r\n.\r\n\n.\n\r.\r"
    )
    with mailbox() as box:
        sent = _send(box.port, Outgoing(_outgoing(5).delivery, {"subject": "Paid", "text": smuggled}))
    assert sent == (True, False, "")
    [mail] = box.messages
    assert mail["Subject"] == "Paid" and "MAIL FROM:<evil@example.com>" in mail.get_content()
    [raw] = box.raw
    bare = raw.replace(b"\r\n", b"")
    assert b"\r" not in bare and b"\n" not in bare, "a line ending other than CRLF went out"


def test_a_long_html_line_is_sent() -> None:
    """Templates render HTML on one line: every line still ends in CRLF, so none exceeds
    SMTP's limit of 1,000 characters unless the template's own line does."""
    html = "<p>" + "word " * 150 + "</p>"
    content = {"subject": "Paid", "text": "Thanks.\nMore.\n", "html": html}
    with mailbox() as box:
        assert _send(box.port, Outgoing(_outgoing(6).delivery, content)) == (True, False, "")
    [mail] = box.messages
    assert mail.get_body(("html",)).get_content().strip() == html  # type: ignore[union-attr]
