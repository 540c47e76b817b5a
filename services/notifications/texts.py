"""What a text-message provider reports, applied (`TextReports`): a text it could not deliver
fails its delivery (and NotificationFailed is published), and a number that answers STOP gets
no more texts until it answers START. Each report is verified first (`sms_reports`); applying
one twice changes nothing more than applying it once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from services.kit.domain_errors import NotFound, Unauthenticated
from services.notifications.domain import Transactions
from services.notifications.settings import TwilioSettings
from services.notifications.sms_reports import ReportRefused, report

__all__ = ["TextReports"]


@dataclass
class TextReports:
    transactions: Transactions
    twilio: TwilioSettings
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))

    def receive(self, channel: str, headers: Mapping[str, str], body: bytes) -> None:
        """ReceiveChannelEvent: a report from `channel`'s provider, verified, then applied."""
        if channel != "sms" or not self.twilio.enabled:
            raise NotFound(
                "CHANNEL_NOT_CONFIGURED",
                "this deployment takes no reports for {channel}",
                channel=channel[:20],
            )
        try:
            told = report(self.twilio, headers, body)
        except ReportRefused as refused:
            raise Unauthenticated(
                "CHANNEL_EVENT_UNVERIFIED", "the report's X-Twilio-Signature does not match", channel=channel
            ) from refused
        now = self.clock()
        with self.transactions() as repo:
            if told.opt_out:
                repo.refuse_texts(told.opt_out, True, now)
            if told.opt_in:
                repo.refuse_texts(told.opt_in, False, now)
            if told.message and told.failed:
                failed = repo.fail_sent(told.message, told.failed, now)
                if failed is not None:
                    repo.publish_outcome(failed)
                else:  # quicker than the recording of its sending: applied when that comes
                    repo.keep_text_failure(told.message, told.failed, now)
