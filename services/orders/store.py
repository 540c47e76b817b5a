"""The orders service's own database: SQLAlchemy tables and queries (no other service reads it).

`OrdersStore.transaction()` opens one connection and one transaction and yields a
`SqlRepository` (the `domain.Repository` over it); events published inside it join that
transaction. Orders saved in a transaction are reported to `on_change` after it commits
(the change hub hands them to the order's watchers).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Engine,
    ForeignKey,
    Index,
    MetaData,
    Row,
    String,
    Table,
    and_,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    mapped_column,
    relationship,
)

from services.kit import leases
from services.kit.bus import BusTables, Outbox, bus_tables
from services.kit.db import (
    CurrencyCode,
    Id,
    MinorUnits,
    UtcDateTime,
    after_commit,
    naming_convention,
    transaction_state,
    transactions,
)
from services.kit.money import Money
from services.kit.sql import filter_conditions, insert_if_absent, keyset_page
from services.orders import events
from services.orders.domain import AWAITING_PAYMENT, PENDING, Event, Line, Order, OrderQuery, RequestKey

__all__ = ["BUS", "Base", "OrderLineRow", "OrderRequestRow", "OrderRow", "OrdersStore", "SqlRepository"]

_IN_LIST = 500
"""Ids per `IN (...)` list: well under SQLite's bound-parameter limit."""

OnChange = Callable[[Collection[Order]], None]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=naming_convention)


BUS: BusTables = bus_tables(Base.metadata)
"""Outbox, deliveries, inbox and subscriptions of this service's events."""


class OrderRow(Base):
    __tablename__ = "orders"
    __table_args__ = (
        Index("ix_orders_owner_create_time", "owner", "create_time", "id"),
        Index("ix_orders_create_time", "create_time", "id"),
        Index("ix_orders_update_time", "update_time", "id"),
        Index("ix_orders_state_next_payment_at", "state", "next_payment_at"),
    )
    id: Mapped[Id]
    owner: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(24))
    currency: Mapped[CurrencyCode]
    total_minor: Mapped[MinorUnits]
    payment: Mapped[str] = mapped_column(String(100))
    failure_reason: Mapped[str] = mapped_column(String(64))
    cancel_reason: Mapped[str] = mapped_column(String(500))
    version: Mapped[int]
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    next_payment_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    payment_attempts: Mapped[int]
    lines: Mapped[list[OrderLineRow]] = relationship(order_by="OrderLineRow.position", lazy="selectin")


class OrderLineRow(Base):
    __tablename__ = "order_line"
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(primary_key=True)
    sku: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int]
    unit_price_minor: Mapped[MinorUnits]
    total_minor: Mapped[MinorUnits]


class OrderRequestRow(Base):
    """An idempotency key of CreateOrder: unique per (owner, request_id)."""

    __tablename__ = "order_request"
    owner: Mapped[str] = mapped_column(String(100), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    order_id: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())


_ORDERS, _LINES = cast(Table, OrderRow.__table__), cast(Table, OrderLineRow.__table__)
_ORDER_WITH_LINES = (
    select(
        _ORDERS,
        _LINES.c.sku,
        _LINES.c.quantity,
        _LINES.c.unit_price_minor,
        _LINES.c.total_minor.label("line_total_minor"),
    )
    .outerjoin(_LINES, _LINES.c.order_id == _ORDERS.c.id)
    .where(_ORDERS.c.id == bindparam("order_id"))
    .order_by(_LINES.c.position)
)
_LINES_OF = (
    select(
        _LINES.c.order_id,
        _LINES.c.sku,
        _LINES.c.quantity,
        _LINES.c.unit_price_minor,
        _LINES.c.total_minor.label("line_total_minor"),
    )
    .where(_LINES.c.order_id.in_(bindparam("order_ids", expanding=True)))
    .order_by(_LINES.c.order_id, _LINES.c.position)
)
"""The lines of a page of orders, in one query (as `_ORDER_WITH_LINES` has them)."""
_REQUEST = select(cast(Table, OrderRequestRow.__table__)).where(
    OrderRequestRow.owner == bindparam("request_owner"), OrderRequestRow.request_id == bindparam("request_id")
)


_SAVED = (
    "state",
    "payment",
    "failure_reason",
    "cancel_reason",
    "version",
    "update_time",
    "next_payment_at",
    "payment_attempts",
)
"""What a saved order may change; the rest is fixed when it is created."""
_SAVE = (
    update(_ORDERS)
    .where(_ORDERS.c.id == bindparam("order_id"), _ORDERS.c.version == bindparam("seen_version"))
    .values({name: bindparam(f"new_{name}") for name in _SAVED})
)
"""Optimistic write of one order (built once: a Core UPDATE costs less to run than to build)."""


def _order_of_rows(rows: Sequence[Row[Any]]) -> Order | None:
    """The order read by `_ORDER_WITH_LINES`: one row per line (one with no line data for an
    order without lines); None for no rows."""
    return _order(rows[0], rows) if rows else None


def _order(head: Any, rows: Iterable[Any]) -> Order:
    """An order from its row and its lines' rows (``sku``, ``quantity``, ``unit_price_minor``,
    ``line_total_minor``; a row without a ``sku`` is no line)."""
    currency = head.currency
    lines = tuple(
        Line(
            row.sku,
            row.quantity,
            Money(currency, row.unit_price_minor),
            Money(currency, row.line_total_minor),
        )
        for row in rows
        if row.sku is not None
    )
    return Order(
        id=head.id,
        owner=head.owner,
        lines=lines,
        total=Money(currency, head.total_minor),
        state=head.state,
        create_time=head.create_time,
        update_time=head.update_time,
        version=head.version,
        payment=head.payment,
        failure_reason=head.failure_reason,
        cancel_reason=head.cancel_reason,
        next_payment_at=head.next_payment_at,
        payment_attempts=head.payment_attempts,
    )


_COLUMNS: dict[str, Any] = {
    "state": OrderRow.state,
    "owner": OrderRow.owner,
    "create_time": OrderRow.create_time,
    "update_time": OrderRow.update_time,
}


_PAYING = (PENDING, AWAITING_PAYMENT)
"""The states in which an order's payment step is under way (authorize, then capture)."""

_SCHEDULE_PAYMENT = (
    update(_ORDERS)
    .where(_ORDERS.c.id == bindparam("order_id"), _ORDERS.c.state.in_(_PAYING))
    .values(next_payment_at=bindparam("payment_at"), payment_attempts=bindparam("attempts"))
)
"""When to try the payment step next (None: never), after how many tries."""

_PAYMENTS_DUE = leases.Queue(
    OrderRow,
    [OrderRow.id],
    free=and_(OrderRow.state.in_(_PAYING), OrderRow.next_payment_at <= bindparam("claim_now")),
    order_by=[OrderRow.next_payment_at],
    # The lease is the next try's time itself: a claimed order is not due until it ends.
    lease={OrderRow.next_payment_at: bindparam("claim_until")},
    returning=[OrderRow.id],
)
"""Orders waiting for their payment step (built once, as every claim is)."""


class SqlRepository:
    """`domain.Repository` over one connection (one transaction)."""

    def __init__(
        self, connection: Connection, outbox: Outbox | None, on_change: OnChange | None = None
    ) -> None:
        self._connection = connection
        self._outbox = outbox
        self._on_change = on_change

    def claim_request(self, key: RequestKey) -> RequestKey | None:
        values = {
            "owner": key.owner,
            "request_id": key.request_id,
            "digest": key.digest,
            "order_id": key.order_id,
            "create_time": dt.datetime.now(dt.UTC),
        }
        if insert_if_absent(self._connection, OrderRequestRow, values):
            return None
        found = {"request_owner": key.owner, "request_id": key.request_id}
        row = self._connection.execute(_REQUEST, found).first()
        if row is None:
            raise RuntimeError("an idempotency key vanished while it was being claimed")
        return RequestKey(row.owner, row.request_id, row.digest, row.order_id)

    def add_order(self, order: Order) -> bool:
        added = insert_if_absent(
            self._connection,
            OrderRow,
            {
                "id": order.id,
                "owner": order.owner,
                "state": order.state,
                "currency": order.total.currency,
                "total_minor": order.total.amount,
                "payment": order.payment,
                "failure_reason": order.failure_reason,
                "cancel_reason": order.cancel_reason,
                "version": order.version,
                "create_time": order.create_time,
                "update_time": order.update_time,
                "next_payment_at": order.next_payment_at,
                "payment_attempts": order.payment_attempts,
            },
        )
        if not added:
            return False
        self._connection.execute(
            insert(cast(Table, OrderLineRow.__table__)),
            [
                {
                    "order_id": order.id,
                    "position": index,
                    "sku": line.sku,
                    "quantity": line.quantity,
                    "unit_price_minor": line.unit_price.amount,
                    "total_minor": line.total.amount,
                }
                for index, line in enumerate(order.lines)
            ],
        )
        self._changed(order)
        return True

    def order(self, order_id: str) -> Order | None:
        # The order and its lines in one round trip (a join), read as plain rows: the ORM's
        # identity map and relationship loading cost more than the query (issue 20).
        return _order_of_rows(self._connection.execute(_ORDER_WITH_LINES, {"order_id": order_id}).all())

    def versions(self, order_ids: Collection[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        ids = list(order_ids)
        for start in range(0, len(ids), _IN_LIST):
            chunk = ids[start : start + _IN_LIST]
            query = select(OrderRow.id, OrderRow.version).where(OrderRow.id.in_(chunk))
            found.update((order_id, version) for order_id, version in self._connection.execute(query))
        return found

    def save(self, order: Order, seen_version: int) -> bool:
        result = self._connection.execute(
            _SAVE,
            {
                "order_id": order.id,
                "seen_version": seen_version,
                **{f"new_{name}": getattr(order, name) for name in _SAVED},
            },
        )
        saved = getattr(result, "rowcount", 0) == 1
        if saved:
            self._changed(order)
        return saved

    def _changed(self, order: Order) -> None:
        if self._on_change is None:
            return
        state = transaction_state(self._connection)
        changed: dict[str, Order] | None = state.get("orders_changed")
        if changed is None:
            changed = state["orders_changed"] = {}
            on_change, noticed = self._on_change, changed
            # One notice per transaction, with every order it changed, once it is durable.
            after_commit(self._connection, lambda: on_change(list(noticed.values())))
        changed[order.id] = order

    def publish(self, event: Event, order: Order) -> None:
        if self._outbox is None:
            raise RuntimeError("this repository was opened without an outbox and cannot publish")
        self._outbox.publish(self._connection, events.message(event, order), aggregate_id=order.name)

    def list_orders(self, query: OrderQuery, after: Sequence[str] | None, limit: int) -> list[Order]:
        statement = select(_ORDERS)
        if query.owner is not None:
            statement = statement.where(OrderRow.owner == query.owner)
        statement = statement.where(*filter_conditions(query.terms, _COLUMNS))
        keys = (_COLUMNS[query.ordering.field], OrderRow.id)
        statement = keyset_page(
            statement, keys, after=after, descending=query.ordering.descending, limit=limit
        )
        heads = self._connection.execute(statement).all()
        lines: dict[str, list[Any]] = {head.id: [] for head in heads}
        ids = list(lines)
        for start in range(0, len(ids), _IN_LIST):
            found = self._connection.execute(_LINES_OF, {"order_ids": ids[start : start + _IN_LIST]})
            for line in found:
                lines[line.order_id].append(line)
        return [_order(head, lines[head.id]) for head in heads]

    def claim_payments(self, now: dt.datetime, lease_until: dt.datetime, limit: int) -> list[Order]:
        claimed = _PAYMENTS_DUE.claim(self._connection, limit, {"claim_now": now, "claim_until": lease_until})
        taken = {row[0] for row in claimed.taken}
        due = [row[0] for row in claimed.found if row[0] in taken]
        return [order for order_id in due if (order := self.order(order_id)) is not None]

    def schedule_payment(self, order_id: str, at: dt.datetime | None, attempts: int) -> None:
        self._connection.execute(
            _SCHEDULE_PAYMENT, {"order_id": order_id, "payment_at": at, "attempts": attempts}
        )


class OrdersStore:
    """Transactions over the orders database, each yielding a `SqlRepository`."""

    def __init__(self, engine: Engine, outbox: Outbox, on_change: OnChange | None = None) -> None:
        self.transaction = transactions(
            engine, lambda connection: SqlRepository(connection, outbox, on_change)
        )
