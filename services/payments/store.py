"""The payments service's own database: SQLAlchemy tables and queries (no other service reads it).

Money is never updated in place: ``ledger_entry`` rows are only inserted, and they are the
truth. A customer account's row also keeps running totals (`balance`, `held`, `update_time`)
written in the same transaction as each entry or payment change, so reading an account
costs the same after ten payments as after ten thousand; a system account (FUNDING, MERCHANT:
an entry for every payment, a hot row if it kept totals) is summed from its entries on the
rare read. Captured and refunded amounts are summed from the payment's own entries.
`PaymentsStore.transaction()` opens one connection and one transaction and yields a
`SqlRepository` (the `records.Repository` over it); events published inside it join it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    ForeignKey,
    Index,
    MetaData,
    Select,
    String,
    Table,
    UniqueConstraint,
    bindparam,
    case,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.kit.bus import BusTables, Outbox, bus_tables
from services.kit.db import CurrencyCode, Id, MinorUnits, UtcDateTime, naming_convention, transactions
from services.kit.sql import filter_conditions, if_absent, insert_if_absent, keyset_page
from services.payments import events
from services.payments.records import (
    AUTHORIZED,
    CUSTOMER,
    PENDING,
    Account,
    LedgerEntry,
    ListQuery,
    Payment,
    PaymentEvent,
)

__all__ = [
    "BUS",
    "AccountRow",
    "Base",
    "LedgerEntryRow",
    "PaymentRow",
    "PaymentsStore",
    "RequestRow",
    "SqlRepository",
]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=naming_convention)


BUS: BusTables = bus_tables(Base.metadata)
"""Outbox, deliveries, inbox and subscriptions of this service's events."""
_PROVIDER_IDS = uuid.UUID("6f1c8a52-3d0e-4f5b-9a57-2c1b0e7d4a90")
"""Namespace of the inbox ids of what outside providers tell (`SqlRepository.first_sight`)."""


class AccountRow(Base):
    """An account. Its amounts live in `LedgerEntryRow` and `PaymentRow`; a CUSTOMER account
    also keeps their running totals here (the store writes them with every change)."""

    __tablename__ = "account"
    __table_args__ = (UniqueConstraint("kind", "owner", "currency"),)
    id: Mapped[Id]
    kind: Mapped[str] = mapped_column(String(16))
    owner: Mapped[str] = mapped_column(String(100), index=True)
    """``users/{user}``; empty for system accounts."""
    currency: Mapped[CurrencyCode]
    version: Mapped[int]
    """Bumped by every change: the write that locks the account (`lock_account`)."""
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    balance: Mapped[int] = mapped_column(BigInteger(), server_default="0")
    """CUSTOMER: the sum of the account's entries. 0 on system accounts (summed when read)."""
    held: Mapped[int] = mapped_column(BigInteger(), server_default="0")
    """CUSTOMER: the sum of its AUTHORIZED payments' amounts."""
    update_time: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    """CUSTOMER: its latest entry or payment change (or its opening). None on system accounts."""
    payment_method: Mapped[str] = mapped_column(String(255), server_default="")
    """CUSTOMER: the outside provider's reusable payment method; "" when none is set."""
    provider_customer: Mapped[str] = mapped_column(String(255), server_default="")


class LedgerEntryRow(Base):
    __tablename__ = "ledger_entry"
    __table_args__ = (Index("ix_ledger_entry_account_time", "account_id", "create_time", "id"),)
    id: Mapped[Id]
    transaction_id: Mapped[str] = mapped_column(String(64), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("account.id"))
    amount: Mapped[MinorUnits]
    currency: Mapped[CurrencyCode]
    kind: Mapped[str] = mapped_column(String(16))
    payment_id: Mapped[str | None] = mapped_column(ForeignKey("payment.id"), index=True)
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class PaymentRow(Base):
    __tablename__ = "payment"
    __table_args__ = (
        Index("ix_payment_account_state", "account_id", "state"),
        Index("ix_payment_owner_time", "owner", "create_time"),
    )
    id: Mapped[Id]
    order_name: Mapped[str] = mapped_column(String(200), unique=True)
    """The order paid for: one payment per order."""
    account_id: Mapped[str | None] = mapped_column(ForeignKey("account.id"))
    owner: Mapped[str] = mapped_column(String(100))
    currency: Mapped[CurrencyCode]
    amount: Mapped[MinorUnits]
    """The authorized amount, fixed at authorization."""
    state: Mapped[str] = mapped_column(String(24))
    failure_reason: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    provider: Mapped[str] = mapped_column(String(16), server_default="")
    """"" for a payment held in the ledger, else the outside provider that holds it."""
    charged_method: Mapped[str] = mapped_column(String(255), server_default="")
    charged_customer: Mapped[str] = mapped_column(String(255), server_default="")
    provider_reference: Mapped[str] = mapped_column(String(255), server_default="", index=True)
    provider_capture: Mapped[str] = mapped_column(String(255), server_default="", index=True)
    compensation: Mapped[str] = mapped_column(String(16), server_default="")
    """Saga compensation the provider worker still has to ask for (`records.Payment`)."""
    compensation_reason: Mapped[str] = mapped_column(String(500), server_default="")
    provider_attempts: Mapped[int] = mapped_column(server_default="0")
    provider_retry_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())


class RequestRow(Base):
    """An idempotency key: one caller's `request_id`, what it was sent with, what it made."""

    __tablename__ = "request"
    caller: Mapped[str] = mapped_column(String(200), primary_key=True)
    key: Mapped[str] = mapped_column(String(36), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    result: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())


_Entry, _Payment, _Account = LedgerEntryRow, PaymentRow, AccountRow

_IS_CUSTOMER = _Account.kind == CUSTOMER
# A system account's amounts, summed only when one is read (an admin's rare read): every
# payment adds to them, so they keep no running totals (`AccountRow`).
_SUMMED_BALANCE = (
    select(func.coalesce(func.sum(_Entry.amount), 0))
    .where(_Entry.account_id == _Account.id)
    .scalar_subquery()
)
_LAST_ENTRY = select(func.max(_Entry.create_time)).where(_Entry.account_id == _Account.id).scalar_subquery()
# What a payment's captures and refunds moved, as the merchant's side of them: captures credit
# the merchant, refunds debit it (a refund the provider failed afterwards credits it back).
_MERCHANT_ENTRY = _Entry.account_id == func.lower(literal("merchant-") + _Payment.currency)
_CAPTURED = (
    select(func.coalesce(func.sum(_Entry.amount), 0))
    .where(_Entry.payment_id == _Payment.id, _Entry.kind == "CAPTURE", _MERCHANT_ENTRY)
    .scalar_subquery()
)
_REFUNDED = (
    select(func.coalesce(func.sum(-_Entry.amount), 0))
    .where(_Entry.payment_id == _Payment.id, _Entry.kind == "REFUND", _MERCHANT_ENTRY)
    .scalar_subquery()
)
# Plain rows, not ORM objects: cheaper to read, and nothing here changes them in place.
# CASE evaluates only the branch taken: a customer account's read sums nothing.
_ACCOUNTS = select(
    _Account.id,
    _Account.kind,
    _Account.owner,
    _Account.currency,
    _Account.create_time,
    case((_IS_CUSTOMER, _Account.balance), else_=_SUMMED_BALANCE).label("balance"),
    _Account.held,
    case((_IS_CUSTOMER, _Account.update_time), else_=_LAST_ENTRY).label("last_change"),
    _Account.payment_method,
    _Account.provider_customer,
)
_PAYMENTS = select(
    cast(Table, PaymentRow.__table__), _CAPTURED.label("captured"), _REFUNDED.label("refunded")
)

# What every saga step runs, built once with bind parameters: SQLAlchemy memoizes a built
# statement's cache key, so these skip the building and hashing that cost more than the query.
_ACCOUNT = _ACCOUNTS.where(_Account.id == bindparam("account_id"))
_CUSTOMER_ACCOUNT = _ACCOUNTS.where(
    _Account.kind == "CUSTOMER",
    _Account.owner == bindparam("account_owner"),
    _Account.currency == bindparam("account_currency"),
)
_ACCOUNT_ROWS, _PAYMENT_ROWS = cast(Table, AccountRow.__table__), cast(Table, PaymentRow.__table__)
# Updates on the tables, not the ORM classes: no ORM objects to keep in step, half the cost.
_LOCK_ACCOUNT = (
    update(_ACCOUNT_ROWS)
    .where(_ACCOUNT_ROWS.c.id == bindparam("account_id"))
    .values(version=_ACCOUNT_ROWS.c.version + 1)
)
# The running totals of a customer account, moved with each entry and payment change; the
# account's update time only ever moves forward. System accounts match no row.
_TOTALS_CHANGED_AT = bindparam("totals_changed_at", type_=UtcDateTime())
_LATER_UPDATE_TIME = case(
    (
        (_ACCOUNT_ROWS.c.update_time.is_(None)) | (_ACCOUNT_ROWS.c.update_time < _TOTALS_CHANGED_AT),
        _TOTALS_CHANGED_AT,
    ),
    else_=_ACCOUNT_ROWS.c.update_time,
)
_ADD_TO_TOTALS = (
    update(_ACCOUNT_ROWS)
    .where(_ACCOUNT_ROWS.c.id == bindparam("totals_account"), _ACCOUNT_ROWS.c.kind == CUSTOMER)
    .values(
        balance=_ACCOUNT_ROWS.c.balance + bindparam("balance_change", type_=BigInteger()),
        held=_ACCOUNT_ROWS.c.held + bindparam("held_change", type_=BigInteger()),
        update_time=_LATER_UPDATE_TIME,
    )
)
_LOCK_CUSTOMER_ACCOUNT = (
    update(_ACCOUNT_ROWS)
    .where(
        _ACCOUNT_ROWS.c.kind == CUSTOMER,
        _ACCOUNT_ROWS.c.owner == bindparam("locked_owner"),
        _ACCOUNT_ROWS.c.currency == bindparam("locked_currency"),
        (bindparam("locked_id") == "") | (_ACCOUNT_ROWS.c.id == bindparam("locked_id")),
    )
    .values(version=_ACCOUNT_ROWS.c.version + 1)
    .returning(_ACCOUNT_ROWS.c.id)
)
_LOCK_ACCOUNT_OF_PAYMENT = (
    update(_ACCOUNT_ROWS)
    .where(
        _ACCOUNT_ROWS.c.id
        == select(_Payment.account_id).where(_Payment.id == bindparam("locked_payment")).scalar_subquery()
    )
    .values(version=_ACCOUNT_ROWS.c.version + 1)
)
_PAYMENT = _PAYMENTS.where(_Payment.id == bindparam("payment_id"))
_ORDER_PAYMENT = _PAYMENTS.where(_Payment.order_name == bindparam("order_name"))
_MOVE_PAYMENT = (
    update(_PAYMENT_ROWS)
    .where(_PAYMENT_ROWS.c.id == bindparam("payment_id"), _PAYMENT_ROWS.c.state == bindparam("state_before"))
    .values(state=bindparam("state_after"), update_time=bindparam("moved_at"))
)
_KEEP_WHEN_EMPTY = {
    column: case(
        (bindparam(f"new_{column}") == "", _PAYMENT_ROWS.c[column]), else_=bindparam(f"new_{column}")
    )
    for column in ("failure_reason", "provider_reference", "provider_capture")
}
# Outside providers' payments move with what the provider said (a decline, its ids).
_MOVE_PROVIDER_PAYMENT = _MOVE_PAYMENT.values(**_KEEP_WHEN_EMPTY)
_ENTRY_ROWS = cast(Table, LedgerEntryRow.__table__)
_ENTRIES = select(_ENTRY_ROWS)
_ADD_ENTRIES = insert(_ENTRY_ROWS)
_REQUEST = select(RequestRow.fingerprint, RequestRow.result).where(
    RequestRow.caller == bindparam("caller"), RequestRow.key == bindparam("request_key")
)


def _held(payment: Payment, state: str) -> int:
    """What `payment`, in `state`, holds of its account: an outside provider's hold is at
    the provider, not in the ledger."""
    return payment.amount if state == AUTHORIZED and not payment.provider else 0


def _account(found: Any) -> Account:
    changes = [t for t in (found.create_time, found.last_change) if t is not None]
    return Account(
        found.id,
        found.kind,
        found.owner,
        found.currency,
        found.create_time,
        max(changes),
        int(found.balance),
        int(found.held),
        found.payment_method,
        found.provider_customer,
    )


def _payment(found: Any) -> Payment:
    return Payment(
        found.id,
        found.order_name,
        found.account_id or "",
        found.owner,
        found.currency,
        found.amount,
        found.state,
        found.failure_reason,
        found.create_time,
        found.update_time,
        int(found.captured),
        int(found.refunded),
        provider=found.provider,
        charged_method=found.charged_method,
        charged_customer=found.charged_customer,
        provider_reference=found.provider_reference,
        provider_capture=found.provider_capture,
        compensation=found.compensation,
        compensation_reason=found.compensation_reason,
        provider_attempts=found.provider_attempts,
        provider_retry_at=found.provider_retry_at,
    )


def _entry(row: Any) -> LedgerEntry:
    return LedgerEntry(
        row.id,
        row.account_id,
        row.transaction_id,
        row.amount,
        row.currency,
        row.kind,
        row.payment_id or "",
        row.create_time,
    )


def _listed(
    statement: Select[Any],
    columns: Mapping[str, Any],
    key: Any,
    query: ListQuery,
    *,
    after: Sequence[str] | None,
    limit: int,
) -> Select[Any]:
    """`statement` narrowed by the query's terms, after the keyset position, in its order."""
    statement = statement.where(*filter_conditions(query.terms, columns))
    ordering = query.ordering
    return keyset_page(
        statement, (columns[ordering.field], key), after=after, descending=ordering.descending, limit=limit
    )


class SqlRepository:
    """`records.Repository` over one connection (one transaction)."""

    def __init__(self, connection: Connection, outbox: Outbox | None) -> None:
        self._connection = connection
        self._outbox = outbox

    # -- accounts -----------------------------------------------------------------------

    def account(self, account_id: str) -> Account | None:
        found = self._connection.execute(_ACCOUNT, {"account_id": account_id}).first()
        return None if found is None else _account(found)

    def account_of(self, owner: str, currency: str) -> Account | None:
        found = self._connection.execute(
            _CUSTOMER_ACCOUNT, {"account_owner": owner, "account_currency": currency}
        ).first()
        return None if found is None else _account(found)

    def add_account(self, account: Account) -> bool:
        values = {
            "id": account.id,
            "kind": account.kind,
            "owner": account.owner,
            "currency": account.currency,
            "version": 0,
            "create_time": account.create_time,
            "balance": 0,
            "held": 0,
            "update_time": account.create_time if account.kind == CUSTOMER else None,
            "payment_method": account.payment_method,
            "provider_customer": account.provider_customer,
        }
        return insert_if_absent(self._connection, AccountRow, values)

    def lock_account(self, account_id: str) -> bool:
        # A write first: a row lock on PostgreSQL, the database write lock on SQLite. Reads
        # after it see every change committed before it, and none can commit meanwhile.
        locked = self._connection.execute(_LOCK_ACCOUNT, {"account_id": account_id})
        return bool(getattr(locked, "rowcount", 0))

    def lock_customer_account(self, owner: str, currency: str, account_id: str = "") -> str:
        # One statement, not a read of the account first (kind, owner and currency are unique).
        params = {"locked_owner": owner, "locked_currency": currency, "locked_id": account_id}
        locked = self._connection.execute(_LOCK_CUSTOMER_ACCOUNT, params).scalar()
        return str(locked) if locked is not None else ""

    def lock_account_of(self, payment_id: str) -> bool:
        # One statement, not a read of the payment first: its account never changes.
        locked = self._connection.execute(_LOCK_ACCOUNT_OF_PAYMENT, {"locked_payment": payment_id})
        return bool(getattr(locked, "rowcount", 0))

    def list_accounts(self, query: ListQuery, after: Sequence[str] | None, limit: int) -> list[Account]:
        columns = {
            "owner": _Account.owner,
            "currency_code": _Account.currency,
            "create_time": _Account.create_time,
        }
        statement = _listed(_ACCOUNTS, columns, _Account.id, query, after=after, limit=limit)
        return [_account(found) for found in self._connection.execute(statement)]

    # -- ledger -------------------------------------------------------------------------

    def add_entries(self, entries: Sequence[LedgerEntry]) -> None:
        self._connection.execute(
            _ADD_ENTRIES,
            [
                {
                    "id": entry.id,
                    "transaction_id": entry.transaction,
                    "account_id": entry.account_id,
                    "amount": entry.amount,
                    "currency": entry.currency,
                    "kind": entry.kind,
                    "payment_id": entry.payment_id or None,
                    "create_time": entry.create_time,
                }
                for entry in entries
            ],
        )
        self._connection.execute(
            _ADD_TO_TOTALS,
            [
                {
                    "totals_account": entry.account_id,
                    "balance_change": entry.amount,
                    "held_change": 0,
                    "totals_changed_at": entry.create_time,
                }
                for entry in entries
            ],
        )

    def entry(self, account_id: str, entry_id: str) -> LedgerEntry | None:
        found = self._connection.execute(
            _ENTRIES.where(_ENTRY_ROWS.c.id == entry_id, _ENTRY_ROWS.c.account_id == account_id)
        ).first()
        return None if found is None else _entry(found)

    def list_entries(
        self, account_id: str, query: ListQuery, after: Sequence[str] | None, limit: int
    ) -> list[LedgerEntry]:
        columns = {"kind": _Entry.kind, "payment": _Entry.payment_id, "create_time": _Entry.create_time}
        statement = _ENTRIES.where(_ENTRY_ROWS.c.account_id == account_id)
        statement = _listed(statement, columns, _Entry.id, query, after=after, limit=limit)
        return [_entry(found) for found in self._connection.execute(statement)]

    # -- payments -----------------------------------------------------------------------

    def payment(self, payment_id: str) -> Payment | None:
        found = self._connection.execute(_PAYMENT, {"payment_id": payment_id}).first()
        return None if found is None else _payment(found)

    def payment_for_order(self, order: str) -> Payment | None:
        found = self._connection.execute(_ORDER_PAYMENT, {"order_name": order}).first()
        return None if found is None else _payment(found)

    def add_payment(self, payment: Payment) -> bool:
        values = {
            "id": payment.id,
            "order_name": payment.order,
            "account_id": payment.account_id or None,
            "owner": payment.owner,
            "currency": payment.currency,
            "amount": payment.amount,
            "state": payment.state,
            "failure_reason": payment.failure_reason,
            "create_time": payment.create_time,
            "update_time": payment.update_time,
            "provider": payment.provider,
            "charged_method": payment.charged_method,
            "charged_customer": payment.charged_customer,
            "provider_reference": payment.provider_reference,
            "provider_capture": payment.provider_capture,
            "compensation": payment.compensation,
            "compensation_reason": payment.compensation_reason,
            "provider_attempts": payment.provider_attempts,
            "provider_retry_at": payment.provider_retry_at,
        }
        if not insert_if_absent(self._connection, PaymentRow, values):
            return False
        self._held(payment, 0, _held(payment, payment.state), payment.update_time)
        return True

    def set_state(
        self,
        payment: Payment,
        after: str,
        now: dt.datetime,
        *,
        failure_reason: str = "",
        reference: str = "",
        capture: str = "",
    ) -> bool:
        params = {
            "payment_id": payment.id,
            "state_before": payment.state,
            "state_after": after,
            "moved_at": now,
        }
        if failure_reason or reference or capture:
            provided = {
                "new_failure_reason": failure_reason,
                "new_provider_reference": reference,
                "new_provider_capture": capture,
            }
            moved = self._connection.execute(_MOVE_PROVIDER_PAYMENT, params | provided)
        else:
            moved = self._connection.execute(_MOVE_PAYMENT, params)
        if not getattr(moved, "rowcount", 0):
            return False
        self._held(payment, _held(payment, payment.state), _held(payment, after), now)
        return True

    def set_payment_method(self, account_id: str, method: str, customer: str) -> None:
        self._connection.execute(
            update(_ACCOUNT_ROWS)
            .where(_ACCOUNT_ROWS.c.id == account_id)
            .values(payment_method=method, provider_customer=customer)
        )

    def set_compensation(self, payment_id: str, compensation: str, reason: str) -> None:
        self._connection.execute(
            update(_PAYMENT_ROWS)
            .where(_PAYMENT_ROWS.c.id == payment_id)
            .values(compensation=compensation, compensation_reason=reason)
        )

    def payment_by_reference(self, provider: str, reference: str) -> Payment | None:
        if not reference:
            return None
        # Its authorization's id, or its capture's (what a provider's refund or dispute names).
        named = (_Payment.provider_reference == reference) | (_Payment.provider_capture == reference)
        found = self._connection.execute(_PAYMENTS.where(_Payment.provider == provider, named)).first()
        return None if found is None else _payment(found)

    def first_sight(self, provider: str, key: str, kind: str) -> bool:
        # The bus's own inbox, keyed by a UUID derived from what the provider calls it (its
        # ids are not UUIDs, and are unique only per provider).
        row = {
            "event_id": str(uuid.uuid5(_PROVIDER_IDS, f"{provider}:{key}")),
            "event_type": f"{provider}.{kind}"[:200],
            "source": provider,
        }
        return (
            self._connection.execute(if_absent(BUS.inbox, self._connection.dialect.name), row).first()
            is not None
        )

    def provider_work(self, pending_before: dt.datetime, now: dt.datetime, limit: int) -> list[Payment]:
        waiting = (_Payment.compensation != "") | (
            (_Payment.state == PENDING) & (_Payment.update_time < pending_before)
        )
        due = _Payment.provider_retry_at.is_(None) | (_Payment.provider_retry_at <= now)
        statement = (
            _PAYMENTS.where(_Payment.provider != "", waiting, due).order_by(_Payment.update_time).limit(limit)
        )
        return [_payment(found) for found in self._connection.execute(statement)]

    def provider_payments(self, provider: str, since: dt.datetime, until: dt.datetime) -> list[Payment]:
        statement = _PAYMENTS.where(
            _Payment.provider == provider, _Payment.create_time >= since, _Payment.create_time < until
        ).order_by(_Payment.create_time, _Payment.id)
        return [_payment(found) for found in self._connection.execute(statement)]

    def postpone(self, payment_id: str, attempts: int, retry_at: dt.datetime | None) -> None:
        self._connection.execute(
            update(_PAYMENT_ROWS)
            .where(_PAYMENT_ROWS.c.id == payment_id)
            .values(provider_attempts=attempts, provider_retry_at=retry_at)
        )

    def seen(self, provider: str, key: str) -> bool:
        event_id = str(uuid.uuid5(_PROVIDER_IDS, f"{provider}:{key}"))
        found = self._connection.execute(select(BUS.inbox.c.event_id).where(BUS.inbox.c.event_id == event_id))
        return found.first() is not None

    def settle_request(self, caller: str, key: str, result: str) -> None:
        self._connection.execute(
            update(RequestRow).where(RequestRow.caller == caller, RequestRow.key == key).values(result=result)
        )

    def _held(self, payment: Payment, before: int, after: int, now: dt.datetime) -> None:
        """The payment's account's `held` moved from `before` to `after` (a decline, which
        holds nothing, still counts as a change of the account)."""
        if payment.account_id:
            self._connection.execute(
                _ADD_TO_TOTALS,
                {
                    "totals_account": payment.account_id,
                    "balance_change": 0,
                    "held_change": after - before,
                    "totals_changed_at": now,
                },
            )

    def list_payments(self, query: ListQuery, after: Sequence[str] | None, limit: int) -> list[Payment]:
        columns = {
            "state": _Payment.state,
            "order": _Payment.order_name,
            "account": _Payment.account_id,
            "owner": _Payment.owner,
            "create_time": _Payment.create_time,
            "update_time": _Payment.update_time,
        }
        statement = _listed(_PAYMENTS, columns, _Payment.id, query, after=after, limit=limit)
        return [_payment(found) for found in self._connection.execute(statement)]

    # -- idempotency keys ---------------------------------------------------------------

    def recall(self, caller: str, key: str) -> tuple[str, str] | None:
        found = self._connection.execute(_REQUEST, {"caller": caller, "request_key": key}).first()
        return None if found is None else (found.fingerprint, found.result)

    def remember(self, caller: str, key: str, fingerprint: str, result: str, now: dt.datetime) -> bool:
        values = {
            "caller": caller,
            "key": key,
            "fingerprint": fingerprint,
            "result": result,
            "create_time": now,
        }
        return insert_if_absent(self._connection, RequestRow, values)

    # -- events -------------------------------------------------------------------------

    def publish(self, event: PaymentEvent) -> None:
        if self._outbox is None:
            raise RuntimeError("this repository was opened without an outbox and cannot publish")
        self._outbox.publish(self._connection, events.message(event), aggregate_id=event.payment.name)


class PaymentsStore:
    """Transactions over the payments database, each yielding a `SqlRepository`."""

    def __init__(self, engine: Engine, outbox: Outbox) -> None:
        self.transaction = transactions(engine, lambda connection: SqlRepository(connection, outbox))
