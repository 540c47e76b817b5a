"""The payments use cases over their real store in a migrated SQLite file, with no server;
and reads of the ledger as a whole, straight from that database."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, case, func, select

from services.kit import db
from services.kit.bus import Outbox, consumer_routing
from services.kit.config import DatabaseSettings
from services.kit.money import Money
from services.payments import store
from services.payments.accounts import Accounts
from services.payments.domain import Payments
from services.payments.paypal_provider import PayPalProvider
from services.payments.providers import PaymentProvider
from services.payments.records import AUTHORIZED, CUSTOMER, Account, Payment
from services.payments.settings import PayPalSettings, StripeSettings
from services.payments.stripe_provider import StripeProvider
from tests.support.paypal_api import CLIENT_ID, CLIENT_SECRET, WEBHOOK_ID, LocalPayPal
from tests.support.stripe_api import API_KEY, WEBHOOK_SECRET, LocalStripe

__all__ = ["ADMIN", "ORDERS", "LocalPayments", "new_key", "open_local", "paypal_provider", "stripe_provider"]

_MIGRATIONS = Path(store.__file__).with_name("migrations")
ADMIN = "users/admin"
"""The caller whose idempotency keys funding and refunds use."""
ORDERS = "spiffe://poly.local/orders"
"""The caller of the INTERNAL calls (authorize, capture, void): the orders service."""


def new_key() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class LocalPayments:
    engine: Engine
    payments: Payments
    accounts: Accounts

    def customer(self, currency: str = "EUR", funds: int = 0) -> Account:
        """A new user's account in `currency`, funded if asked."""
        account = self.accounts.open_account(f"users/{uuid.uuid4()}", currency)
        if funds:
            account = self.accounts.fund(ADMIN, new_key(), account.id, Money(currency, funds))
        return account

    def authorize(
        self, account: Account, amount: int, *, order: str = "", request_id: str = "", capture: bool = False
    ) -> Payment:
        """AuthorizePayment of `amount` from `account` (in its currency), as orders calls it;
        with `capture`, a sale."""
        return self.payments.authorize(
            ORDERS,
            request_id or new_key(),
            order=order or f"orders/{uuid.uuid4()}",
            owner=account.owner,
            account_id="",
            amount=Money(account.currency, amount),
            capture=capture,
        )

    def account(self, account_id: str) -> Account:
        """The account as an admin reads it (balance, held and available derived by the store)."""
        return self.accounts.account(account_id, lambda owner, name: None)

    def unbalanced_transactions(self) -> list[tuple[str, int, int, int]]:
        """``(transaction, currencies, entries, sum)`` of every transaction that mixes
        currencies, has fewer than two entries, or whose entries do not sum to zero."""
        entry = store.LedgerEntryRow
        currencies, total = func.count(func.distinct(entry.currency)), func.sum(entry.amount)
        statement = (
            select(entry.transaction_id, currencies, func.count(), total)
            .group_by(entry.transaction_id)
            .having((currencies != 1) | (func.count() < 2) | (total != 0))
        )
        with self.engine.connect() as connection:
            return [(str(t), int(c), int(n), int(s)) for t, c, n, s in connection.execute(statement)]

    def balances(self, *account_ids: str) -> dict[str, int]:
        """The sum of the entries of each of `account_ids` (0 for an account without any)."""
        entry = store.LedgerEntryRow
        statement = (
            select(entry.account_id, func.sum(entry.amount))
            .where(entry.account_id.in_(account_ids))
            .group_by(entry.account_id)
        )
        with self.engine.connect() as connection:
            found = {str(a): int(s) for a, s in connection.execute(statement)}
        return {account_id: found.get(account_id, 0) for account_id in account_ids}

    def drifted_totals(self) -> dict[str, tuple[tuple[int, int, object], tuple[int, int, object]]]:
        """Every customer account whose stored running totals (balance, held, update time)
        differ from what its entries and payments sum to: ``{id: (stored, summed)}``."""
        account, entry, payment = store.AccountRow, store.LedgerEntryRow, store.PaymentRow
        with self.engine.connect() as connection:
            stored = {
                str(row.id): (int(row.balance), int(row.held), row.update_time)
                for row in connection.execute(
                    select(account.id, account.balance, account.held, account.update_time).where(
                        account.kind == CUSTOMER
                    )
                )
            }
            sums = {
                str(a): (int(total), last)
                for a, total, last in connection.execute(
                    select(entry.account_id, func.sum(entry.amount), func.max(entry.create_time)).group_by(
                        entry.account_id
                    )
                )
            }
            holds = {
                str(a): (int(total), last)
                for a, total, last in connection.execute(
                    select(
                        payment.account_id,
                        func.sum(
                            case(
                                ((payment.state == AUTHORIZED) & (payment.provider == ""), payment.amount),
                                else_=0,
                            )
                        ),
                        func.max(payment.update_time),
                    ).group_by(payment.account_id)
                )
            }
            opened = {str(a): t for a, t in connection.execute(select(account.id, account.create_time))}
        drifted = {}
        for account_id, kept in stored.items():
            balance, last_entry = sums.get(account_id, (0, None))
            held, last_payment = holds.get(account_id, (0, None))
            changes = [t for t in (opened[account_id], last_entry, last_payment) if t is not None]
            summed = (balance, held, max(changes))
            if kept != summed:
                drifted[account_id] = (kept, summed)
        return drifted

    def overdrawn(self) -> dict[str, int]:
        """The balance of every account whose entries sum below zero, by account id."""
        entry = store.LedgerEntryRow
        statement = (
            select(entry.account_id, func.sum(entry.amount))
            .group_by(entry.account_id)
            .having(func.sum(entry.amount) < 0)
        )
        with self.engine.connect() as connection:
            return {str(a): int(s) for a, s in connection.execute(statement)}

    def published(self, payment: str) -> list[str]:
        """Types of the events published for `payment` (``payments/{id}``), in order."""
        outbox = store.BUS.outbox
        statement = (
            select(outbox.c.event_type).where(outbox.c.aggregate_id == payment).order_by(outbox.c.position)
        )
        with self.engine.connect() as connection:
            return [str(t).rsplit(".", 1)[-1] for t in connection.execute(statement).scalars()]


def open_local(path: Path, provider: PaymentProvider | None = None) -> LocalPayments:
    """Payments over a new SQLite database at `path`, migrated by the service's migrations;
    held by `provider`, or in the ledger."""
    engine = db.connect(DatabaseSettings(url=f"sqlite:///{path}"), migrations=_MIGRATIONS)
    outbox = Outbox(store.BUS, source="payments", routing=consumer_routing())
    payments = Payments(store.PaymentsStore(engine, outbox).transaction, provider=provider)
    return LocalPayments(engine, payments, Accounts(payments.transactions, payments.outside))


def stripe_provider(api: LocalStripe, *, key: str = API_KEY, timeout: float = 1.0) -> StripeProvider:
    """The Stripe provider over `api` (a short timeout: tests stall answers past it)."""
    settings = StripeSettings(
        api_key=key, webhook_secret=WEBHOOK_SECRET, api_base=api.api_base, timeout_seconds=timeout
    )
    return StripeProvider(settings)


def paypal_provider(api: LocalPayPal, *, secret: str = CLIENT_SECRET, timeout: float = 1.0) -> PayPalProvider:
    """The PayPal provider over `api` (a short timeout: tests stall answers past it)."""
    settings = PayPalSettings(
        client_id=CLIENT_ID,
        client_secret=secret,
        webhook_id=WEBHOOK_ID,
        api_base=api.api_base,
        timeout_seconds=timeout,
    )
    return PayPalProvider(settings)
