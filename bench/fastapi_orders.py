"""The FastAPI app `bench/vs_fastapi.py` holds the kit against: ``GET /v1/orders/{order}``
written the way a FastAPI team writes it, on the orders service's own SQLite file.

- SQLAlchemy 2.0 models of the two tables it reads (``orders``, ``order_line``; the schema
  is ``services/orders/store.py``'s), a sync engine with SQLAlchemy's defaults, a session
  per request, one SELECT of the order joined with its lines;
- the bearer token verified with PyJWT against the auth service's public keys, fetched once
  at start from the edge's ``/.well-known/jwks.json``: the key its ``kid`` names, that key's
  algorithm, issuer, audience, expiry and the claims the kit requires;
- the caller must own the order (or be an admin), as the kit's ``require_owner`` says;
- a Pydantic response model with the same fields and JSON names as the edge's answer
  (proto3 JSON: camelCase, int64 money as a string, RFC 3339 UTC timestamps).

Two apps, one route each, served by ``uvicorn --factory`` (one worker, uvloop and
httptools, access log off as the kit's access line is):

    sync_app   ``def`` endpoint: the FastAPI tutorial shape; the session comes from a ``def``
               generator dependency and both run on Starlette's thread pool
    async_app  ``async def`` endpoint running the same sync query inline on the event loop

Settings come from the environment when a factory is called (nothing is read at import):
``VS_FASTAPI_DATABASE`` (the SQLite file), ``VS_FASTAPI_JWKS_URL``, ``VS_FASTAPI_ISSUER``,
``VS_FASTAPI_AUDIENCE``.

(No ``from __future__ import annotations``: FastAPI must see the dependencies of the nested
endpoints as objects, not as names it cannot resolve.)
"""

import datetime as dt
import json
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
from fastapi import Depends, FastAPI, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from sqlalchemy import ForeignKey, create_engine, select
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    joinedload,
    mapped_column,
    relationship,
    sessionmaker,
)

__all__ = ["async_app", "sync_app"]

REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "jti"]


# --- the tables (read only) ---------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class OrderRow(Base):
    __tablename__ = "orders"
    id: Mapped[str] = mapped_column(primary_key=True)
    owner: Mapped[str]
    state: Mapped[str]
    currency: Mapped[str]
    total_minor: Mapped[int]
    payment: Mapped[str]
    failure_reason: Mapped[str]
    cancel_reason: Mapped[str]
    version: Mapped[int]
    create_time: Mapped[dt.datetime]
    update_time: Mapped[dt.datetime]
    lines: Mapped[list["OrderLineRow"]] = relationship(order_by="OrderLineRow.position", lazy="raise")


class OrderLineRow(Base):
    __tablename__ = "order_line"
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), primary_key=True)
    position: Mapped[int] = mapped_column(primary_key=True)
    sku: Mapped[str]
    quantity: Mapped[int]
    unit_price_minor: Mapped[int]
    total_minor: Mapped[int]


# --- the response -------------------------------------------------------------------------


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class Money(_Camel):
    currency_code: str
    amount_minor: str


class OrderLine(_Camel):
    sku: str
    quantity: int
    unit_price: Money
    total: Money


class Order(_Camel):
    name: str
    owner: str
    lines: list[OrderLine]
    total: Money
    state: str
    payment: str
    failure_reason: str
    cancel_reason: str
    etag: str
    create_time: dt.datetime
    update_time: dt.datetime


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC)  # SQLite holds naive UTC


def to_order(row: OrderRow) -> Order:
    def money(minor: int) -> Money:
        return Money(currency_code=row.currency, amount_minor=str(minor))

    return Order(
        name=f"orders/{row.id}",
        owner=row.owner,
        lines=[
            OrderLine(
                sku=line.sku,
                quantity=line.quantity,
                unit_price=money(line.unit_price_minor),
                total=money(line.total_minor),
            )
            for line in row.lines
        ],
        total=money(row.total_minor),
        state=f"STATE_{row.state}",
        payment=row.payment,
        failure_reason=row.failure_reason,
        cancel_reason=row.cancel_reason,
        etag=f'W/"{row.version}"',
        create_time=_utc(row.create_time),
        update_time=_utc(row.update_time),
    )


# --- the app --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    subject: str
    roles: frozenset[str]


def _fetch_keys(url: str) -> dict[str, jwt.PyJWK]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        document = json.loads(reply.read())
    keys = jwt.PyJWKSet.from_dict({"keys": [{k: v for k, v in key.items() if v} for key in document["keys"]]})
    return {key.key_id: key for key in keys.keys if key.key_id}


def _build(endpoint_kind: str) -> FastAPI:
    engine = create_engine(f"sqlite:///{os.environ['VS_FASTAPI_DATABASE']}")
    sessions = sessionmaker(engine)
    keys = _fetch_keys(os.environ["VS_FASTAPI_JWKS_URL"])
    issuer, audience = os.environ["VS_FASTAPI_ISSUER"], os.environ["VS_FASTAPI_AUDIENCE"]
    bearer = HTTPBearer()

    async def current_caller(
        credentials: Annotated[HTTPAuthorizationCredentials, Depends(bearer)],
    ) -> Caller:
        token = credentials.credentials
        try:
            key = keys[jwt.get_unverified_header(token)["kid"]]
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=audience,
                issuer=issuer,
                options={"require": REQUIRED_CLAIMS},
            )
        except (jwt.PyJWTError, KeyError):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid access token") from None
        return Caller(claims["sub"], frozenset(claims.get("roles", ())))

    def get_session() -> Iterator[Session]:
        with sessions() as session:
            yield session

    def read(session: Session, order_id: str, caller: Caller) -> Order:
        row = session.scalar(
            select(OrderRow).options(joinedload(OrderRow.lines)).where(OrderRow.id == order_id)
        )
        if row is None or (row.owner != caller.subject and "admin" not in caller.roles):
            # Permission before existence, as the kit: a missing order is nobody's.
            if row is None and "admin" in caller.roles:
                raise HTTPException(status.HTTP_404_NOT_FOUND, "order not found")
            raise HTTPException(status.HTTP_403_FORBIDDEN, "not your order")
        return to_order(row)

    app = FastAPI(title=f"orders ({endpoint_kind})", openapi_url=None, docs_url=None, redoc_url=None)

    if endpoint_kind == "sync":

        @app.get("/v1/orders/{order_id}", response_model=Order)
        def get_order(
            order_id: str,
            caller: Annotated[Caller, Depends(current_caller)],
            session: Annotated[Session, Depends(get_session)],
        ) -> Order:
            return read(session, order_id, caller)

    else:

        @app.get("/v1/orders/{order_id}", response_model=Order)
        async def get_order_inline(
            order_id: str, caller: Annotated[Caller, Depends(current_caller)]
        ) -> Order:
            with sessions() as session:
                return read(session, order_id, caller)

    return app


def sync_app() -> FastAPI:
    return _build("sync")


def async_app() -> FastAPI:
    return _build("async")
