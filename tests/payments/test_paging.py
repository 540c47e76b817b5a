"""ListLedgerEntries, ListPayments and ListAccounts pages while another thread inserts: keyset
pagination on (create_time, id) serves no item twice and skips none that existed before."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from poly.payments.v1 import payments_service_pb2 as pb
from tests.payments.helpers import System
from tests.support.waiting import eventually

ORDERINGS = pytest.mark.parametrize("order_by", ["", "create_time asc"], ids=["default", "asc"])
MAX_INSERTS = 40
"""The writer stops after this many: in ascending order a writer faster than the reader
would otherwise keep the last page moving forever."""


def _names(items: Any) -> list[str]:
    return [item.name for item in items]


def _pages(list_page: Callable[[str], tuple[list[str], str]]) -> tuple[list[str], int]:
    names: list[str] = []
    token, pages = "", 0
    while True:
        found, token = list_page(token)
        names += found
        pages += 1
        if not token:
            return names, pages


def _while_inserting(
    insert: Callable[[], None], list_page: Callable[[str], tuple[list[str], str]]
) -> tuple[list[str], int, int]:
    """Every page of a listing, read while `insert` runs in a loop on another thread; the
    names served, the number of pages and the number of inserts made meanwhile."""
    stop, inserted = threading.Event(), [0]

    def writer() -> None:
        while not stop.is_set() and inserted[0] < MAX_INSERTS:
            insert()
            inserted[0] += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        names, pages = _pages(list_page)
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive()
    return names, pages, inserted[0]


def _ignore(_: object) -> None:
    return None


def _at_least(count: int, names: list[str]) -> list[str] | None:
    return names if len(names) >= count else None


def _check(before: set[str], names: list[str], pages: int, inserted: int) -> None:
    assert pages >= 4 and inserted, (pages, inserted)
    assert len(names) == len(set(names)), "no item is served twice"
    assert before <= set(names), "every item that existed before the listing is served"


@ORDERINGS
def test_ledger_entries_page_without_duplicates_or_gaps(system: System, order_by: str) -> None:
    customer = system.customer()
    for _ in range(10):
        system.fund(customer.account, 100)
    stub = system.payments()

    def page(token: str) -> tuple[list[str], str]:
        request = pb.ListLedgerEntriesRequest(
            parent=customer.account, page_size=3, page_token=token, order_by=order_by
        )
        reply = stub.ListLedgerEntries(request, metadata=customer.metadata, timeout=10)
        return _names(reply.ledger_entries), reply.next_page_token

    before = set(_pages(page)[0])
    assert len(before) >= 10
    names, pages, inserted = _while_inserting(lambda: _ignore(system.fund(customer.account, 1)), page)
    _check(before, names, pages, inserted)
    assert set(names) <= set(_pages(page)[0]), "nothing served that is not in the account"


@ORDERINGS
def test_payments_page_without_duplicates_or_gaps(system: System, order_by: str) -> None:
    customer = system.customer(funds=1_000_000)
    for _ in range(10):
        system.order_created(customer, 10)
    stub = system.payments()

    def page(token: str) -> tuple[list[str], str]:
        request = pb.ListPaymentsRequest(page_size=3, page_token=token, order_by=order_by)
        reply = stub.ListPayments(request, metadata=system.admin, timeout=10)
        return _names(reply.payments), reply.next_page_token

    before = set(_pages(page)[0])
    assert len(before) >= 10
    names, pages, inserted = _while_inserting(lambda: _ignore(system.order_created(customer, 10)), page)
    _check(before, names, pages, inserted)
    assert set(names) <= set(_pages(page)[0])


@ORDERINGS
def test_accounts_page_without_duplicates_or_gaps(system: System, order_by: str) -> None:
    stub = system.payments()

    def page(token: str) -> tuple[list[str], str]:
        request = pb.ListAccountsRequest(page_size=3, page_token=token, order_by=order_by)
        reply = stub.ListAccounts(request, metadata=system.admin, timeout=10)
        return _names(reply.accounts), reply.next_page_token

    opened = len(_pages(page)[0])
    for _ in range(9):
        system.deployment.register()
    before = set(eventually(lambda: _at_least(opened + 9, _pages(page)[0]), what="9 more accounts"))
    # The accounts of users registered meanwhile are opened by payments as the events arrive.
    names, pages, inserted = _while_inserting(lambda: _ignore(system.deployment.register()), page)
    _check(before, names, pages, inserted)
    eventually(lambda: set(names) <= set(_pages(page)[0]), what="every served account to exist")
