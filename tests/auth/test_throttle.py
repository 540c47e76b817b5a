"""`Throttle` over the real store, without a server: each kind of key has its limit, an
attempt counts within the window only, and one never settled counts until its lease ends."""

from __future__ import annotations

import pytest

from services.auth.throttle import LOGIN_THROTTLED, REGISTRATION_THROTTLED, RESERVATION_SECONDS, Attempt
from services.kit.domain_errors import ResourceExhausted
from tests.auth.local import SETTINGS, LocalAuth

LIMITS = {
    "account": ("account:ada@example.com", SETTINGS.login_failures_per_account, LOGIN_THROTTLED),
    "client": ("client:reporting", SETTINGS.login_failures_per_account, LOGIN_THROTTLED),
    "address": ("address:192.0.2.1", SETTINGS.login_failures_per_address, LOGIN_THROTTLED),
    "registration": ("registration:192.0.2.1", SETTINGS.registrations_per_address, REGISTRATION_THROTTLED),
}


def _reserve(local: LocalAuth, key: str, throttled: tuple[str, str] = LOGIN_THROTTLED) -> Attempt:
    with local.auth_store.transaction() as repo:
        return local.throttle.reserve(repo, [key], throttled=throttled)


def _refusal(local: LocalAuth, key: str, throttled: tuple[str, str] = LOGIN_THROTTLED) -> ResourceExhausted:
    with pytest.raises(ResourceExhausted) as refused:
        _reserve(local, key, throttled)
    return refused.value


@pytest.mark.parametrize(("key", "limit", "throttled"), LIMITS.values(), ids=LIMITS.keys())
def test_each_kind_of_key_is_refused_at_its_limit(
    local: LocalAuth, key: str, limit: int, throttled: tuple[str, str]
) -> None:
    for _ in range(limit):
        local.throttle.fail(_reserve(local, key, throttled))
    refused = _refusal(local, key, throttled)
    assert refused.reason == throttled[0]
    assert refused.retry_after_seconds == SETTINGS.login_window_seconds
    assert refused.metadata == {"seconds": str(int(SETTINGS.login_window_seconds))}
    assert local.counted(key) == limit  # a refused attempt is not recorded


def test_attempts_count_until_the_oldest_ages_out_of_the_window(local: LocalAuth) -> None:
    key = "account:ada@example.com"
    for _ in range(SETTINGS.login_failures_per_account):
        local.throttle.fail(_reserve(local, key))
        local.clock.advance(100)
    # The oldest failure was 300 s ago: it leaves the window in 300 s, the wait refused asks.
    assert _refusal(local, key).retry_after_seconds == SETTINGS.login_window_seconds - 300
    local.clock.advance(SETTINGS.login_window_seconds - 300 - 0.5)
    assert _refusal(local, key).retry_after_seconds == 1.0  # 0.5 s to go, but never under 1 s
    local.clock.advance(0.5)
    local.throttle.fail(_reserve(local, key))  # the oldest aged out, so one more fits
    assert local.counted(key) == SETTINGS.login_failures_per_account  # and it was forgotten


def test_a_released_attempt_does_not_count(local: LocalAuth) -> None:
    key = "account:ada@example.com"
    for _ in range(SETTINGS.login_failures_per_account + 2):
        attempt = _reserve(local, key)
        with local.throttle.settling(attempt):
            pass  # neither failed nor settled: released
    assert local.counted(key) == 0
    assert _reserve(local, key).id


def test_an_attempt_never_settled_counts_until_its_lease_ends(local: LocalAuth) -> None:
    """A process that dies between reserving and settling: its attempts hold their place
    while their lease lasts, and not after."""
    key = "account:ada@example.com"
    for _ in range(SETTINGS.login_failures_per_account):
        _reserve(local, key)  # and never settled
    assert _refusal(local, key).retry_after_seconds == SETTINGS.login_window_seconds
    local.clock.advance(RESERVATION_SECONDS)
    assert _reserve(local, key).id
    assert local.counted(key) == 0


def test_one_key_at_its_limit_refuses_an_attempt_on_all_its_keys(local: LocalAuth) -> None:
    full, other = "address:192.0.2.1", "account:ada@example.com"
    for _ in range(SETTINGS.login_failures_per_address):
        local.throttle.fail(_reserve(local, full))
    with pytest.raises(ResourceExhausted), local.auth_store.transaction() as repo:
        local.throttle.reserve(repo, [other, full])
    assert local.counted(other) == 0
    with local.auth_store.transaction() as repo:
        local.throttle.reserve(repo, [])  # no key (an operator's registration): never refused
