"""The auth service's own database: SQLAlchemy tables and queries (no other service reads it).

`AuthStore.transaction()` opens one transaction, with an ORM session over it, and yields a
`SqlRepository` (the `domain.Repository` over it); events published inside it join that
transaction.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

from sqlalchemy import (
    Connection,
    Engine,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    String,
    Text,
    and_,
    delete,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.auth import events, keys
from services.auth.domain import (
    ACTIVE,
    CLIENT_CREDENTIALS,
    CONFIDENTIAL,
    Client,
    CodeClaim,
    FederatedLogin,
    Grant,
    Identity,
    IdentityQuery,
    RefreshClaim,
)
from services.kit.bus import BusTables, Outbox, bus_tables
from services.kit.db import CreatedAt, Id, UtcDateTime, naming_convention, orm_session, transactions
from services.kit.sql import insert_if_absent, keyset_page

__all__ = [
    "BUS",
    "AuthStore",
    "AuthorizationCodeRow",
    "Base",
    "ClientRow",
    "ExternalIdentityRow",
    "FederatedLoginRow",
    "FamilyRow",
    "IdentityRow",
    "LoginFailureRow",
    "RefreshTokenRow",
    "RoleRow",
    "SigningKeyRow",
    "SqlRepository",
]

_ACTIVE, _ROTATED, _REVOKED = "ACTIVE", "ROTATED", "REVOKED"
_REUSED = "REUSED"
"""The family of a code presented again before its first use had opened a session."""
_THROTTLE_LOCKS = 0x706F6C79
"""PostgreSQL advisory-lock class of login throttling ("poly"); the key's hash is the object."""


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=naming_convention)


BUS: BusTables = bus_tables(Base.metadata)
"""Outbox, deliveries, inbox and subscriptions of this service's events."""


class IdentityRow(Base):
    __tablename__ = "identity"
    id: Mapped[Id]
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16))
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    email_verified: Mapped[bool] = mapped_column(server_default=false())


class RoleRow(Base):
    __tablename__ = "identity_role"
    identity_id: Mapped[str] = mapped_column(ForeignKey("identity.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(32), primary_key=True, index=True)


class FamilyRow(Base):
    """A login session: the chain of refresh tokens rotated from one login."""

    __tablename__ = "refresh_family"
    id: Mapped[Id]
    identity_id: Mapped[str] = mapped_column(ForeignKey("identity.id", ondelete="CASCADE"), index=True)
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    revoke_time: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    client_id: Mapped[str] = mapped_column(String(64), server_default="")
    """The client the session was issued to (authorization code flow); empty for a login's."""
    scope: Mapped[str] = mapped_column(String(1000), server_default="")
    """What that client was granted, space-separated."""


class RefreshTokenRow(Base):
    __tablename__ = "refresh_token"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    family_id: Mapped[str] = mapped_column(ForeignKey("refresh_family.id", ondelete="CASCADE"), index=True)
    identity_id: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    expire_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class AuthorizationCodeRow(Base):
    """A one-time code of the authorization code flow, kept past its use until it expires so
    that a second use is recognised (and revokes the session the first one opened)."""

    __tablename__ = "authorization_code"
    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64))
    identity_id: Mapped[str] = mapped_column(ForeignKey("identity.id", ondelete="CASCADE"), index=True)
    redirect_uri: Mapped[str] = mapped_column(Text())
    scope: Mapped[str] = mapped_column(String(1000))
    code_challenge: Mapped[str] = mapped_column(String(128))
    nonce: Mapped[str] = mapped_column(String(255))
    auth_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    expire_time: Mapped[dt.datetime] = mapped_column(UtcDateTime(), index=True)
    use_time: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    family_id: Mapped[str | None] = mapped_column(String(64))
    """The session its use opened."""


class ExternalIdentityRow(Base):
    """A person of an outside provider, and the identity they sign in here as."""

    __tablename__ = "external_identity"
    issuer: Mapped[str] = mapped_column(String(255), primary_key=True)
    subject: Mapped[str] = mapped_column(String(255), primary_key=True)
    identity_id: Mapped[str] = mapped_column(ForeignKey("identity.id", ondelete="CASCADE"), index=True)
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class FederatedLoginRow(Base):
    """A sign-in sent to an outside provider, until the person returns (once) or it expires."""

    __tablename__ = "federated_login"
    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    alias: Mapped[str] = mapped_column(String(32))
    nonce: Mapped[str] = mapped_column(String(64))
    code_verifier: Mapped[str] = mapped_column(String(128))
    request: Mapped[str] = mapped_column(Text())
    binding: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    expire_time: Mapped[dt.datetime] = mapped_column(UtcDateTime(), index=True)


class LoginFailureRow(Base):
    """An attempt that counts against a throttling key: a failed login or a registration,
    or (while `pending_until` is set) one being verified or registered, which counts until
    it is settled or its lease ends."""

    __tablename__ = "login_failure"
    __table_args__ = (Index("ix_login_failure_key_fail_time", "key", "fail_time"),)
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(320))
    """``account:<email>``, ``client:<id>``, ``address:<ip>`` (logins and client tokens) or
    ``registration:<ip>``."""
    fail_time: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    attempt: Mapped[str | None] = mapped_column(String(36), index=True)
    """The reserved attempt this row belongs to (one row per key); None once settled."""
    pending_until: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())


class ClientRow(Base):
    __tablename__ = "client"
    client_id: Mapped[Id]
    display_name: Mapped[str] = mapped_column(String(63))
    scopes: Mapped[str] = mapped_column(String(1000))
    """Space-separated."""
    secret_hash: Mapped[str] = mapped_column(String(255))
    """Empty for a public client (it has no secret)."""
    create_time: Mapped[CreatedAt]
    client_type: Mapped[str] = mapped_column(String(16), server_default=CONFIDENTIAL)
    redirect_uris: Mapped[str] = mapped_column(Text(), server_default="")
    """Space-separated (a redirect URI holds no space)."""
    grant_types: Mapped[str] = mapped_column(String(200), server_default=CLIENT_CREDENTIALS)
    """Space-separated."""
    first_party: Mapped[bool] = mapped_column(server_default=false())


class SigningKeyRow(Base):
    __tablename__ = "signing_key"
    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(16))
    public_key: Mapped[bytes] = mapped_column(LargeBinary())
    sealed_private_key: Mapped[bytes] = mapped_column(LargeBinary())
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime(), index=True)


def _identity(row: IdentityRow, roles: Sequence[str]) -> Identity:
    return Identity(
        row.id,
        row.email,
        tuple(sorted(roles)),
        row.state,
        row.create_time,
        row.update_time,
        email_verified=row.email_verified,
    )


def _client(row: ClientRow) -> Client:
    return Client(
        row.client_id,
        row.display_name,
        tuple(row.scopes.split()),
        row.create_time,
        client_type=row.client_type,
        redirect_uris=tuple(row.redirect_uris.split()),
        grant_types=tuple(row.grant_types.split()),
        first_party=row.first_party,
    )


class SqlRepository:
    """`domain.Repository` over an ORM session over one transaction's connection."""

    def __init__(self, connection: Connection, outbox: Outbox | None) -> None:
        self._session = orm_session(connection)
        self._outbox = outbox

    # -- identities -----------------------------------------------------------------------

    def add_identity(self, identity: Identity, password_hash: str) -> bool:
        values = {
            "id": identity.id,
            "email": identity.email,
            "password_hash": password_hash,
            "state": identity.state,
            "create_time": identity.create_time,
            "update_time": identity.update_time,
            "email_verified": identity.email_verified,
        }
        if not insert_if_absent(self._session, IdentityRow, values):
            return False  # the email is taken (the unique constraint decides, races included)
        self._session.add_all(RoleRow(identity_id=identity.id, role=role) for role in identity.roles)
        return True

    def email_taken(self, email: str) -> bool:
        return bool(self._session.scalar(select(exists().where(IdentityRow.email == email))))

    def _roles(self, user_ids: Sequence[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {user_id: [] for user_id in user_ids}
        rows = self._session.execute(
            select(RoleRow.identity_id, RoleRow.role).where(RoleRow.identity_id.in_(user_ids))
        )
        for user_id, role in rows:
            found[user_id].append(role)
        return found

    def identity(self, user_id: str) -> Identity | None:
        row = self._session.get(IdentityRow, user_id)
        return None if row is None else _identity(row, self._roles([user_id])[user_id])

    def credentials(self, email: str) -> tuple[Identity, str] | None:
        row = self._session.scalar(select(IdentityRow).where(IdentityRow.email == email))
        return None if row is None else (_identity(row, self._roles([row.id])[row.id]), row.password_hash)

    def set_password_hash(self, user_id: str, password_hash: str) -> None:
        self._session.execute(
            update(IdentityRow).where(IdentityRow.id == user_id).values(password_hash=password_hash)
        )

    def set_roles(self, user_id: str, roles: Sequence[str], now: dt.datetime) -> None:
        self._session.execute(delete(RoleRow).where(RoleRow.identity_id == user_id))
        self._session.add_all(RoleRow(identity_id=user_id, role=role) for role in roles)
        self._session.execute(update(IdentityRow).where(IdentityRow.id == user_id).values(update_time=now))

    def set_state(self, user_id: str, state: str, now: dt.datetime) -> None:
        self._session.execute(
            update(IdentityRow).where(IdentityRow.id == user_id).values(state=state, update_time=now)
        )

    def count_admins(self) -> int:
        query = (
            select(func.count())
            .select_from(RoleRow)
            .join(IdentityRow, IdentityRow.id == RoleRow.identity_id)
            .where(RoleRow.role == "admin", IdentityRow.state == ACTIVE)
        )
        return int(self._session.scalar(query) or 0)

    def list_identities(
        self, query: IdentityQuery, after: Sequence[str] | None, limit: int
    ) -> list[Identity]:
        statement = select(IdentityRow)
        if query.email is not None:
            statement = statement.where(IdentityRow.email == query.email)
        if query.state is not None:
            statement = statement.where(IdentityRow.state == query.state)
        if query.role is not None:
            statement = statement.where(
                exists().where(RoleRow.identity_id == IdentityRow.id, RoleRow.role == query.role)
            )
        column = IdentityRow.email if query.order_by == "email" else IdentityRow.create_time
        statement = keyset_page(
            statement, (column, IdentityRow.id), after=after, descending=query.descending, limit=limit
        )
        rows = list(self._session.scalars(statement))
        roles = self._roles([row.id for row in rows])
        return [_identity(row, roles[row.id]) for row in rows]

    def publish_registered(self, identity: Identity, display_name: str) -> None:
        if self._outbox is None:
            raise RuntimeError("this repository was opened without an outbox and cannot publish")
        self._outbox.publish(
            self._session, events.user_registered(identity, display_name), aggregate_id=identity.name
        )

    # -- sessions -------------------------------------------------------------------------

    def add_refresh_token(
        self,
        token_hash: str,
        family: str,
        user_id: str,
        expire_time: dt.datetime,
        now: dt.datetime,
        *,
        client_id: str = "",
        scope: str = "",
    ) -> None:
        if self._session.get(FamilyRow, family) is None:
            self._session.add(
                FamilyRow(id=family, identity_id=user_id, create_time=now, client_id=client_id, scope=scope)
            )
            self._session.flush()
        self._session.add(
            RefreshTokenRow(
                token_hash=token_hash,
                family_id=family,
                identity_id=user_id,
                state=_ACTIVE,
                create_time=now,
                expire_time=expire_time,
            )
        )

    def claim_refresh_token(self, token_hash: str, now: dt.datetime) -> RefreshClaim:
        # One conditional UPDATE: of two concurrent uses of a token exactly one claims it,
        # and the other is then seen as reuse.
        claimed = self._session.execute(
            update(RefreshTokenRow)
            .where(
                RefreshTokenRow.token_hash == token_hash,
                RefreshTokenRow.state == _ACTIVE,
                RefreshTokenRow.expire_time > now,
            )
            .values(state=_ROTATED)
            .returning(RefreshTokenRow.family_id, RefreshTokenRow.identity_id)
        ).first()
        if claimed is not None:
            family = self._session.get(FamilyRow, claimed.family_id)
            client_id, scope = (family.client_id, family.scope) if family else ("", "")
            return RefreshClaim("claimed", claimed.family_id, claimed.identity_id, client_id, scope)
        row = self._session.get(RefreshTokenRow, token_hash)
        if row is None:
            return RefreshClaim("unknown")
        outcome = {_ROTATED: "reused", _REVOKED: "revoked"}.get(row.state, "expired")
        return RefreshClaim(outcome, row.family_id, row.identity_id)  # type: ignore[arg-type]

    def revoke_family(self, family: str, now: dt.datetime) -> None:
        self._session.execute(
            update(RefreshTokenRow)
            .where(RefreshTokenRow.family_id == family, RefreshTokenRow.state != _REVOKED)
            .values(state=_REVOKED)
        )
        self._session.execute(
            update(FamilyRow)
            .where(FamilyRow.id == family, FamilyRow.revoke_time.is_(None))
            .values(revoke_time=now)
        )

    def revoke_families_of(self, user_id: str, now: dt.datetime) -> None:
        families = self._session.scalars(
            select(FamilyRow.id).where(FamilyRow.identity_id == user_id, FamilyRow.revoke_time.is_(None))
        )
        for family in list(families):
            self.revoke_family(family, now)

    def family_of(self, token_hash: str) -> str | None:
        return self._session.scalar(
            select(RefreshTokenRow.family_id).where(RefreshTokenRow.token_hash == token_hash)
        )

    def family_active(self, family: str) -> bool:
        row = self._session.get(FamilyRow, family)
        return row is not None and row.revoke_time is None

    # -- authorization codes ----------------------------------------------------------------

    def add_authorization_code(
        self, code_hash: str, grant: Grant, expire_time: dt.datetime, now: dt.datetime
    ) -> None:
        # Codes live seconds; one a day past its expiry has no reuse left to recognise.
        self._add_expiring(
            AuthorizationCodeRow(
                code_hash=code_hash,
                client_id=grant.client_id,
                identity_id=grant.user_id,
                redirect_uri=grant.redirect_uri,
                scope=grant.scope,
                code_challenge=grant.code_challenge,
                nonce=grant.nonce,
                auth_time=grant.auth_time,
                create_time=now,
                expire_time=expire_time,
            ),
            now,
        )

    def claim_authorization_code(self, code_hash: str, now: dt.datetime) -> CodeClaim:
        # One conditional UPDATE, as for refresh tokens: of two concurrent uses exactly one wins.
        code = AuthorizationCodeRow
        claimed = self._session.execute(
            update(code)
            .where(code.code_hash == code_hash, code.use_time.is_(None), code.expire_time > now)
            .values(use_time=now)
            .returning(
                code.client_id,
                code.identity_id,
                code.redirect_uri,
                code.scope,
                code.code_challenge,
                code.nonce,
                code.auth_time,
            )
        ).first()
        if claimed is not None:
            return CodeClaim("claimed", Grant(*claimed))
        row = self._session.get(code, code_hash)
        if row is None:
            return CodeClaim("unknown")
        return CodeClaim("used" if row.use_time else "expired")

    def set_code_family(self, code_hash: str, family: str) -> bool:
        # Conditional, as the flag below: whichever of the two comes first, the other sees it.
        updated = self._session.execute(
            update(AuthorizationCodeRow)
            .where(AuthorizationCodeRow.code_hash == code_hash, AuthorizationCodeRow.family_id.is_(None))
            .values(family_id=family)
        )
        return bool(getattr(updated, "rowcount", 0))

    def flag_code_reused(self, code_hash: str) -> str:
        flagged = self._session.execute(
            update(AuthorizationCodeRow)
            .where(AuthorizationCodeRow.code_hash == code_hash, AuthorizationCodeRow.family_id.is_(None))
            .values(family_id=_REUSED)
        )
        if getattr(flagged, "rowcount", 0):
            return ""
        family = self._session.scalar(
            select(AuthorizationCodeRow.family_id).where(AuthorizationCodeRow.code_hash == code_hash)
        )
        return "" if family in (None, _REUSED) else str(family)

    # -- outside providers ------------------------------------------------------------------

    def add_federated_login(
        self, state_hash: str, login: FederatedLogin, expire_time: dt.datetime, now: dt.datetime
    ) -> None:
        self._add_expiring(
            FederatedLoginRow(
                state_hash=state_hash,
                alias=login.alias,
                nonce=login.nonce,
                code_verifier=login.code_verifier,
                request=login.request,
                binding=login.binding,
                create_time=now,
                expire_time=expire_time,
            ),
            now,
        )

    def _add_expiring(self, row: AuthorizationCodeRow | FederatedLoginRow, now: dt.datetime) -> None:
        """Add `row`, forgetting the rows of its table a day past their expiry (each lives minutes)."""
        table = type(row)
        self._session.execute(delete(table).where(table.expire_time < now - dt.timedelta(days=1)))
        self._session.add(row)

    def take_federated_login(self, state_hash: str, now: dt.datetime) -> FederatedLogin | None:
        row = FederatedLoginRow
        taken = self._session.execute(
            delete(row)
            .where(row.state_hash == state_hash, row.expire_time > now)
            .returning(row.alias, row.nonce, row.code_verifier, row.request, row.binding)
        ).first()
        return None if taken is None else FederatedLogin(*taken)

    def linked_identity(self, issuer: str, subject: str) -> Identity | None:
        user_id = self._session.scalar(
            select(ExternalIdentityRow.identity_id).where(
                ExternalIdentityRow.issuer == issuer, ExternalIdentityRow.subject == subject
            )
        )
        return None if user_id is None else self.identity(user_id)

    def link_identity(self, issuer: str, subject: str, user_id: str, now: dt.datetime) -> bool:
        values = {"issuer": issuer, "subject": subject, "identity_id": user_id, "create_time": now}
        return insert_if_absent(self._session, ExternalIdentityRow, values)

    def hand_over(self, user_id: str, now: dt.datetime) -> None:
        self._session.execute(
            update(IdentityRow)
            .where(IdentityRow.id == user_id)
            .values(password_hash="", email_verified=True, update_time=now)
        )
        self._session.execute(delete(ExternalIdentityRow).where(ExternalIdentityRow.identity_id == user_id))
        self.revoke_families_of(user_id, now)

    # -- throttling -----------------------------------------------------------------------

    def lock_throttle_keys(self, keys: Sequence[str]) -> None:
        # SQLite needs nothing: every transaction holds the database's write lock
        # (BEGIN IMMEDIATE). PostgreSQL: one transaction-scoped lock per key, taken in one
        # order so that two logins never wait on each other's second key.
        if self._session.get_bind().dialect.name == "postgresql":
            for key in sorted(set(keys)):
                self._session.execute(
                    select(func.pg_advisory_xact_lock(literal(_THROTTLE_LOCKS), func.hashtext(key)))
                )

    def attempts_since(self, key: str, since: dt.datetime, now: dt.datetime) -> list[dt.datetime]:
        query = select(LoginFailureRow.fail_time).where(
            LoginFailureRow.key == key,
            or_(
                and_(LoginFailureRow.pending_until.is_(None), LoginFailureRow.fail_time > since),
                LoginFailureRow.pending_until > now,
            ),
        )
        return list(self._session.scalars(query))

    def forget_attempts(self, keys: Sequence[str], before: dt.datetime, now: dt.datetime) -> None:
        self._session.execute(
            delete(LoginFailureRow).where(
                LoginFailureRow.key.in_(keys),
                LoginFailureRow.fail_time <= before,
                or_(LoginFailureRow.pending_until.is_(None), LoginFailureRow.pending_until <= now),
            )
        )

    def reserve_attempt(self, keys: Sequence[str], now: dt.datetime, until: dt.datetime) -> str:
        attempt = str(uuid.uuid4())
        self._session.add_all(
            LoginFailureRow(key=key, fail_time=now, attempt=attempt, pending_until=until) for key in keys
        )
        return attempt

    def count_attempt(self, attempt: str, now: dt.datetime) -> None:
        self._session.execute(
            update(LoginFailureRow)
            .where(LoginFailureRow.attempt == attempt)
            .values(fail_time=now, attempt=None, pending_until=None)
        )

    def release_attempt(self, attempt: str) -> None:
        self._session.execute(delete(LoginFailureRow).where(LoginFailureRow.attempt == attempt))

    def clear_failures(self, key: str) -> None:
        self._session.execute(
            delete(LoginFailureRow).where(LoginFailureRow.key == key, LoginFailureRow.pending_until.is_(None))
        )

    # -- machine clients ------------------------------------------------------------------

    def add_client(self, client: Client, secret_hash: str) -> bool:
        values = {
            "client_id": client.client_id,
            "display_name": client.display_name,
            "scopes": " ".join(client.scopes),
            "client_type": client.client_type,
            "redirect_uris": " ".join(client.redirect_uris),
            "grant_types": " ".join(client.grant_types),
            "first_party": client.first_party,
            "secret_hash": secret_hash,
            "create_time": client.create_time,
        }
        return insert_if_absent(self._session, ClientRow, values)

    def client(self, client_id: str) -> tuple[Client, str] | None:
        row = self._session.get(ClientRow, client_id)
        return None if row is None else (_client(row), row.secret_hash)

    def list_clients(self, after: Sequence[str] | None, limit: int) -> list[Client]:
        statement = keyset_page(
            select(ClientRow),
            (ClientRow.create_time, ClientRow.client_id),
            after=after,
            descending=True,
            limit=limit,
        )
        return [_client(row) for row in self._session.scalars(statement)]

    def delete_client(self, client_id: str) -> bool:
        deleted = self._session.execute(delete(ClientRow).where(ClientRow.client_id == client_id))
        return bool(getattr(deleted, "rowcount", 0))

    # -- signing keys ---------------------------------------------------------------------

    def signing_keys(self, limit: int = keys.PUBLISHED_KEYS) -> list[keys.SealedKey]:
        """The newest keys first: the first one signs."""
        rows = self._session.scalars(
            select(SigningKeyRow)
            .order_by(SigningKeyRow.create_time.desc(), SigningKeyRow.kid.desc())
            .limit(limit)
        )
        return [
            keys.SealedKey(row.kid, row.algorithm, row.public_key, row.sealed_private_key, row.create_time)
            for row in rows
        ]

    def add_signing_key(self, sealed: keys.SealedKey) -> None:
        self._session.add(
            SigningKeyRow(
                kid=sealed.kid,
                algorithm=sealed.algorithm,
                public_key=sealed.public_key,
                sealed_private_key=sealed.sealed_private_key,
                create_time=sealed.create_time,
            )
        )


class AuthStore:
    """Transactions over the auth database, each yielding a `SqlRepository`."""

    def __init__(self, engine: Engine, outbox: Outbox) -> None:
        self.transaction = transactions(engine, lambda connection: SqlRepository(connection, outbox))
