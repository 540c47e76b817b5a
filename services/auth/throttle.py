"""Throttling: how many attempts each key may make within the window, decided so that a
burst cannot overshoot.

Keys are ``account:<email>`` and ``address:<ip>`` (logins), ``client:<id>`` and
``address:<ip>`` (client tokens), ``registration:<ip>`` (registrations). An attempt is
reserved against all its keys in the transaction that checks their limits (one decision per
key at a time), then settled: counted (a wrong secret, a registration) until it ages out of
the window, or released (anything else). One never settled counts until its lease ends.
Past a limit every attempt is refused (a login with the right password too) until the oldest
counted one ages out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from services.auth.domain import Clock, Repository, Transactions, utc_now
from services.auth.settings import IdentitySettings
from services.kit.domain_errors import ResourceExhausted, Unavailable

__all__ = ["LOGIN_THROTTLED", "REGISTRATION_THROTTLED", "RESERVATION_SECONDS", "Attempt", "Throttle"]

LOGIN_THROTTLED = ("LOGIN_THROTTLED", "too many failed logins; try again in {seconds} seconds")
"""The refusal (reason and message) of a login or client token past its limit."""
REGISTRATION_THROTTLED = (
    "REGISTRATION_THROTTLED",
    "too many registrations from this address; try again in {seconds} seconds",
)
RESERVATION_SECONDS = 60.0
"""How long an attempt being verified counts at most: a process that dies before settling
it (or cannot reach its database to) frees it after this."""


@dataclass(slots=True)
class Attempt:
    """A login, client-token or registration attempt reserved against its throttling keys;
    `settled` once it is counted or released."""

    id: str
    settled: bool = False


@dataclass
class Throttle:
    transactions: Transactions
    settings: IdentitySettings
    clock: Clock = utc_now

    def reserve(
        self, repo: Repository, keys: Sequence[str], *, throttled: tuple[str, str] = LOGIN_THROTTLED
    ) -> Attempt:
        """Refuse (`throttled`: reason and message) if any of `keys` is at its limit, else count
        this attempt against them all: one decision per key at a time, so concurrent attempts
        cannot all pass the check."""
        repo.lock_throttle_keys(keys)
        now = self.clock()
        window = dt.timedelta(seconds=self.settings.login_window_seconds)
        repo.forget_attempts(keys, now - window, now)
        for key in keys:
            attempts = repo.attempts_since(key, now - window, now)
            if len(attempts) >= self._limit(key):
                retry_after = max(1.0, (min(attempts) + window - now).total_seconds())
                raise ResourceExhausted(
                    *throttled,
                    retry_after_seconds=retry_after,
                    seconds=int(retry_after + 0.999),
                )
        until = now + dt.timedelta(seconds=RESERVATION_SECONDS)
        return Attempt(repo.reserve_attempt(keys, now, until))

    def _limit(self, key: str) -> int:
        kind = key.partition(":")[0]
        if kind == "registration":
            return self.settings.registrations_per_address
        if kind == "address":
            return self.settings.login_failures_per_address
        return self.settings.login_failures_per_account  # account: or client:

    def fail(self, attempt: Attempt) -> None:
        """Settle `attempt` as a failure (a wrong secret), in a transaction of its own."""
        with self.transactions() as repo:
            repo.count_attempt(attempt.id, self.clock())
        attempt.settled = True

    @contextmanager
    def settling(self, attempt: Attempt) -> Iterator[None]:
        """Releases `attempt` if the block leaves it unsettled: whatever ended the block (a
        correct secret, a busy hasher, a disabled account), it was not a wrong secret."""
        try:
            yield
        finally:
            if not attempt.settled:
                # A busy database (Unavailable): the reservation's lease frees it instead.
                with suppress(Unavailable), self.transactions() as repo:
                    repo.release_attempt(attempt.id)
