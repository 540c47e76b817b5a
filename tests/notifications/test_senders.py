"""The email sender against a real SMTP server (aiosmtpd on 127.0.0.1): connections are
reused between messages, and a connection the server dropped is replaced, not a failure."""

from __future__ import annotations

import asyncio
import datetime as dt

from services.notifications.domain import EMAIL, Delivery, Outgoing
from services.notifications.senders import EmailSender
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
