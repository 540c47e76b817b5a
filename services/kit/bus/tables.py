"""The bus's tables, added to each service's own metadata (and so to its migrations).

- ``bus_outbox``: one row per published event, written in the publisher's transaction.
- ``bus_delivery``: one row per event and route (a declared consumer, or the broker),
  with its state (pending, delivered, dead), attempts, backoff and claim lease.
- ``bus_inbox``: the id of every event this service has applied, written in the same
  transaction as the effect, so a redelivered event is recognised and skipped.
- ``bus_subscription``: which services called the deprecated ``Subscribe`` here, for which
  event types: a record only, routes come from the contract.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    func,
)

from services.kit.db import UtcDateTime

__all__ = ["PENDING", "DELIVERED", "DEAD", "BusTables", "bus_tables"]

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
_Position = BigInteger().with_variant(Integer(), "sqlite")


@dataclass(frozen=True)
class BusTables:
    outbox: Table
    delivery: Table
    inbox: Table
    subscription: Table


def bus_tables(metadata: MetaData) -> BusTables:
    """Define the bus tables on `metadata` (a service's ``Base.metadata``)."""
    outbox = Table(
        "bus_outbox",
        metadata,
        Column("position", _Position, primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False, unique=True),
        Column("event_type", String(200), nullable=False),
        Column("aggregate_id", String(200), nullable=False),
        Column("occur_time", UtcDateTime(), nullable=False),
        Column("envelope", LargeBinary(), nullable=False),
    )
    delivery = Table(
        "bus_delivery",
        metadata,
        Column("position", _Position, ForeignKey("bus_outbox.position"), primary_key=True),
        Column("route", String(64), primary_key=True),
        Column("event_type", String(200), nullable=False),
        Column("aggregate_id", String(200), nullable=False),
        Column("state", String(16), nullable=False, default=PENDING),
        Column("attempts", Integer(), nullable=False, default=0),
        Column("next_attempt_at", UtcDateTime(), nullable=False),
        Column("lease_owner", String(100), nullable=True),
        Column("lease_until", UtcDateTime(), nullable=True),
        Column("last_error", String(500), nullable=True),
        Column("delivered_at", UtcDateTime(), nullable=True),
        Index("ix_bus_delivery_order", "route", "aggregate_id", "state", "position"),
        Index("ix_bus_delivery_due", "state", "next_attempt_at"),
    )
    inbox = Table(
        "bus_inbox",
        metadata,
        Column("event_id", String(36), primary_key=True),
        Column("event_type", String(200), nullable=False),
        Column("source", String(64), nullable=False),
        Column("received_at", UtcDateTime(), nullable=False, server_default=func.now()),
    )
    subscription = Table(
        "bus_subscription",
        metadata,
        Column("subscriber", String(64), primary_key=True),
        Column("event_type", String(200), primary_key=True),
        Column("created_at", UtcDateTime(), nullable=False, server_default=func.now()),
    )
    return BusTables(outbox, delivery, inbox, subscription)
