"""The accounts use cases (`Accounts`): opening and funding customer accounts, their payment
method at an outside provider, and reading accounts and their ledger entries.

A customer account is opened for each new user in the default currency; only an admin funds
it (a FUNDING transaction from the currency's funding account); reads check ownership before
existence (`rules.OwnerCheck`). Where an outside provider holds payments, the account carries
the owner's reusable payment method there instead (`set_payment_method`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from services.kit import paging
from services.kit.domain_errors import FailedPrecondition, FieldViolation, NotFound
from services.kit.money import Money, money_problems
from services.kit.text import visible_text_problem
from services.payments.idempotency import Request, fingerprint, key_problems, recall, remember
from services.payments.ledger import balanced_entries, system_account
from services.payments.outside import OutsideSteps
from services.payments.records import (
    ACCOUNT_FIELDS,
    CUSTOMER,
    ENTRY_FIELDS,
    FUNDING,
    Account,
    AccountPage,
    EntryPage,
    LedgerEntry,
    Viewer,
    list_query,
)
from services.payments.rules import (
    ACCOUNT_NOT_FOUND,
    OwnerCheck,
    Transactions,
    position,
    refuse,
    visible,
    wrong_currency,
)

__all__ = ["Accounts"]

_MAX_METHOD = 255


@dataclass
class Accounts:
    transactions: Transactions
    outside: OutsideSteps | None = None
    """The outside provider's steps where one holds payments (`domain.Payments.outside`)."""
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))

    def open_account(self, owner: str, currency: str) -> Account:
        """The owner's account in `currency`, opened if missing (idempotent)."""
        now = self.clock()
        with self.transactions() as repo:
            repo.add_account(Account(str(uuid.uuid4()), CUSTOMER, owner, currency, now, now))
            opened = repo.account_of(owner, currency)
        assert opened is not None
        return opened

    def fund(self, caller: str, request_id: str, account_id: str, amount: Money) -> Account:
        problems = key_problems(request_id)
        refuse(problems + money_problems("amount", amount.currency, amount.amount, positive=True), "fund")
        request = Request(caller, request_id, fingerprint("fund", account_id, amount))
        now = self.clock()
        with self.transactions() as repo:
            if not repo.lock_account(account_id):
                raise NotFound(ACCOUNT_NOT_FOUND, "accounts/{account} does not exist", account=account_id)
            if recall(repo, request) is None:
                account = repo.account(account_id)
                assert account is not None
                if account.kind != CUSTOMER:
                    raise FailedPrecondition(
                        "ACCOUNT_NOT_FUNDABLE", "accounts/{account} is a system account", account=account_id
                    )
                if amount.currency != account.currency:
                    raise wrong_currency(account.currency)
                source = system_account(repo, FUNDING, amount.currency, now)
                legs = [(source, -amount.amount), (account_id, amount.amount)]
                repo.add_entries(balanced_entries(legs, amount.currency, "FUNDING", "", now))
                remember(repo, request, account_id, self.clock())
            funded = repo.account(account_id)
        assert funded is not None
        return funded

    def account(self, account_id: str, check_owner: OwnerCheck, *, asked: str = "") -> Account:
        """Permission before existence: a missing account is checked as one nobody owns.
        `asked` is the name a refusal gives (a resource under the account); by default the
        account's own."""
        with self.transactions() as repo:
            found = repo.account(account_id)
        check_owner(found.owner if found else "", asked or f"accounts/{account_id}")
        if found is None:
            raise NotFound(ACCOUNT_NOT_FOUND, "accounts/{account} does not exist", account=account_id)
        return found

    def set_payment_method(self, account_id: str, method: str, check_owner: OwnerCheck) -> Account:
        """SetPaymentMethod: the outside provider's reusable method for the account's payments
        (a Stripe PaymentMethod id, a PayPal vault token), made reusable at the provider."""
        account = self.account(account_id, check_owner)  # who may, before what they sent
        problem = visible_text_problem(method, max_length=_MAX_METHOD)
        refuse([FieldViolation("payment_method", problem)] if problem else [], "payment method")
        if self.outside is None:
            raise FailedPrecondition(
                "PAYMENT_METHODS_NOT_USED",
                "payments are held in the ledger here; fund accounts/{account} instead",
                account=account_id,
            )
        if account.kind != CUSTOMER:
            raise FailedPrecondition(
                "ACCOUNT_NOT_FUNDABLE", "accounts/{account} is a system account", account=account_id
            )
        return self.outside.attach(account, method)

    def list_accounts(
        self, viewer: Viewer, *, size: int, token: str, filter_text: str, order_by: str
    ) -> AccountPage:
        limit = paging.page_size(size)
        query = visible(list_query(filter_text, order_by, ACCOUNT_FIELDS, ["create_time"]), viewer)
        request = [filter_text, order_by]
        after = paging.decode_token(token, request)
        with self.transactions() as repo:
            found = repo.list_accounts(query, after, limit + 1)
        return AccountPage(*paging.split_page(found, limit, position, request))

    def entry(self, account_id: str, entry_id: str, check_owner: OwnerCheck) -> LedgerEntry:
        self.account(account_id, check_owner, asked=f"accounts/{account_id}/ledgerEntries/{entry_id}")
        with self.transactions() as repo:
            found = repo.entry(account_id, entry_id)
        if found is None:
            raise NotFound(
                "LEDGER_ENTRY_NOT_FOUND",
                "accounts/{account}/ledgerEntries/{entry} does not exist",
                account=account_id,
                entry=entry_id,
            )
        return found

    def list_entries(
        self,
        account_id: str,
        check_owner: OwnerCheck,
        *,
        size: int,
        token: str,
        filter_text: str,
        order_by: str,
    ) -> EntryPage:
        limit = paging.page_size(size)
        query = list_query(filter_text, order_by, ENTRY_FIELDS, ["create_time"])
        request = [account_id, filter_text, order_by]
        after = paging.decode_token(token, request)
        self.account(account_id, check_owner)
        with self.transactions() as repo:
            found = repo.list_entries(account_id, query, after, limit + 1)
        return EntryPage(*paging.split_page(found, limit, position, request))
