"""Pure rules of orders: the transition table, backoff and what a watch waits for."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools

import pytest

from services.kit.domain_errors import InvalidArgument
from services.kit.money import Money
from services.orders import domain

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
LEGAL = {
    ("PENDING", "AWAITING_PAYMENT"),
    ("PENDING", "PAID"),
    ("PENDING", "PAYMENT_FAILED"),
    ("PENDING", "CANCELLED"),
    ("AWAITING_PAYMENT", "PAID"),
    ("AWAITING_PAYMENT", "CANCELLED"),
    ("PAID", "FULFILLED"),
    ("PAID", "CANCELLED"),
}


def _order(state: str = domain.PENDING) -> domain.Order:
    line = domain.Line("A", 1, Money("EUR", 5), Money("EUR", 5))
    return domain.Order("abcd", "users/u", (line,), Money("EUR", 5), state, NOW, NOW)


@pytest.mark.parametrize(
    ("source", "target"),
    list(itertools.product(domain.STATES, repeat=2)),
    ids=[f"{a}->{b}" for a, b in itertools.product(domain.STATES, repeat=2)],
)
def test_only_the_contracts_transitions_are_legal(source: str, target: str) -> None:
    order = _order(source)
    if (source, target) in LEGAL:
        moved = order.moved(target, NOW + dt.timedelta(seconds=1))
        assert (moved.state, moved.version) == (target, order.version + 1)
        assert moved.etag != order.etag
        assert (moved.next_payment_at is not None) == (target == domain.AWAITING_PAYMENT)
    else:
        with pytest.raises(ValueError, match="illegal transition"):
            order.moved(target, NOW)


def test_terminal_states_are_the_ones_without_moves() -> None:
    assert {domain.FULFILLED, domain.CANCELLED, domain.PAYMENT_FAILED} == domain.TERMINAL


def test_payment_backoff_doubles_and_is_capped() -> None:
    assert dt.timedelta(seconds=0.25) <= domain.payment_backoff(0) <= dt.timedelta(seconds=0.5)
    assert dt.timedelta(seconds=2) <= domain.payment_backoff(3) <= dt.timedelta(seconds=4)
    assert domain.payment_backoff(500) <= domain.PAYMENT_BACKOFF_MAX


def test_the_capture_request_id_is_stable_per_order() -> None:
    assert domain.capture_request_id(_order()) == domain.capture_request_id(_order(domain.PAID))
    other = dataclasses.replace(_order(), id="efgh")
    assert domain.capture_request_id(other) != domain.capture_request_id(_order())


def test_watch_until_keeps_the_states_it_is_given() -> None:
    assert domain.watch_until([]) == frozenset()
    assert domain.watch_until([domain.PAID, domain.PAID]) == {domain.PAID}
    assert domain.watch_until(domain.STATES) == set(domain.STATES)


@pytest.mark.parametrize(
    ("states", "fields"),
    [
        ([""], {"until_states[0]"}),
        ([domain.PAID, "", "SHIPPED"], {"until_states[1]", "until_states[2]"}),
        ([domain.PAID] * (len(domain.STATES) + 1), {"until_states"}),
    ],
    ids=["unspecified", "two-of-three", "too-many"],
)
def test_watch_until_refuses_what_is_no_state(states: list[str], fields: set[str]) -> None:
    with pytest.raises(InvalidArgument) as refused:
        domain.watch_until(states)
    assert refused.value.reason == "UNTIL_STATES_INVALID"
    assert {v.field for v in refused.value.violations} == fields
