"""ListLedgerEntries, ListPayments and ListAccounts pages while another thread inserts: keyset
pagination on (create_time, id) serves no item twice and skips none that existed before."""

from __future__ import annotations

import pytest

from poly.payments.v1 import payments_service_pb2 as pb
from tests.payments.helpers import System
from tests.support import paging
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow  # starts the payments service

ORDERINGS = pytest.mark.parametrize("order_by", ["", "create_time asc"], ids=["default", "asc"])


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
        return paging.names(reply.ledger_entries), reply.next_page_token

    before = set(paging.all_pages(page)[0])
    assert len(before) >= 10
    names, pages, inserted = paging.while_inserting(lambda: system.fund(customer.account, 1), page)
    _check(before, names, pages, inserted)
    assert set(names) <= set(paging.all_pages(page)[0]), "nothing served that is not in the account"


@ORDERINGS
def test_payments_page_without_duplicates_or_gaps(system: System, order_by: str) -> None:
    customer = system.customer(funds=1_000_000)
    for _ in range(10):
        system.authorized(customer, 10)
    stub = system.payments()

    def page(token: str) -> tuple[list[str], str]:
        request = pb.ListPaymentsRequest(page_size=3, page_token=token, order_by=order_by)
        reply = stub.ListPayments(request, metadata=system.admin, timeout=10)
        return paging.names(reply.payments), reply.next_page_token

    before = set(paging.all_pages(page)[0])
    assert len(before) >= 10
    names, pages, inserted = paging.while_inserting(lambda: system.authorized(customer, 10), page)
    _check(before, names, pages, inserted)
    assert set(names) <= set(paging.all_pages(page)[0])


@ORDERINGS
def test_accounts_page_without_duplicates_or_gaps(system: System, order_by: str) -> None:
    stub = system.payments()

    def page(token: str) -> tuple[list[str], str]:
        request = pb.ListAccountsRequest(page_size=3, page_token=token, order_by=order_by)
        reply = stub.ListAccounts(request, metadata=system.admin, timeout=10)
        return paging.names(reply.accounts), reply.next_page_token

    opened = len(paging.all_pages(page)[0])
    for _ in range(9):
        system.deployment.register()
    before = set(
        eventually(lambda: paging.at_least(opened + 9, paging.all_pages(page)[0]), what="9 more accounts")
    )
    # The accounts of users registered meanwhile are opened by payments as the events arrive.
    names, pages, inserted = paging.while_inserting(system.deployment.register, page)
    _check(before, names, pages, inserted)
    eventually(lambda: set(names) <= set(paging.all_pages(page)[0]), what="every served account to exist")
