"""The auth domain's parts over their real store in a migrated SQLite file, with no server:
real argon2 (at its cheapest costs), real signing keys and a verifier of the tokens, and a
clock the test moves by hand."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, func, select

from services.auth import forms, passwords, store, tokens
from services.auth.accounts import Accounts
from services.auth.authorize import Authorize
from services.auth.clients import Clients
from services.auth.codes import Codes
from services.auth.domain import Identity, TokenSet
from services.auth.oauth import OAuthServer
from services.auth.sessions import Sessions
from services.auth.settings import IdentitySettings
from services.auth.signin import SignIn
from services.auth.throttle import Throttle
from services.kit import authn, db
from services.kit.bus import Outbox, consumer_routing
from services.kit.config import AuthSettings, DatabaseSettings
from tests.support.clock import Clock

__all__ = ["ADDRESS", "PASSWORD", "SETTINGS", "LocalAuth", "open_local"]

MIGRATIONS = Path(store.__file__).with_name("migrations")
PASSWORD = "violet-harbour-lantern-42"
ADDRESS = "192.0.2.1"
SETTINGS = IdentitySettings(
    access_token_seconds=900,
    refresh_token_seconds=3600,
    argon2_time_cost=1,
    argon2_memory_kib=1024,
    argon2_parallelism=1,
    argon2_memory_budget_kib=8 * 1024,
    login_failures_per_account=3,
    login_failures_per_address=5,
    login_window_seconds=600.0,
    registrations_per_address=4,
)
"""Small limits, so each test reaches them in a few calls."""


@dataclass(frozen=True)
class LocalAuth:
    engine: Engine
    auth_store: store.AuthStore
    clock: Clock
    throttle: Throttle
    accounts: Accounts
    signin: SignIn
    sessions: Sessions
    clients: Clients
    verifier: authn.Verifier
    oauth: OAuthServer
    authorize: Authorize
    ring: tokens.KeyRing

    def register(self, *, roles: Sequence[str] = (), address: str | None = None) -> Identity:
        """A new account with `PASSWORD` (registered as an operator does, unless `address`)."""
        email = f"{uuid.uuid4().hex[:10]}@example.com"
        return self.accounts.register(email, PASSWORD, "Ada", address=address, roles=roles)

    def login(self, identity: Identity, *, address: str = ADDRESS) -> TokenSet:
        return self.signin.login(identity.email, PASSWORD, address)

    def published(self) -> list[str]:
        """Types of the events in the outbox, in order (``UserRegistered``)."""
        outbox = store.BUS.outbox
        with self.engine.connect() as connection:
            found = connection.execute(select(outbox.c.event_type).order_by(outbox.c.position)).scalars()
            return [str(t).rsplit(".", 1)[-1] for t in found]

    def stored_refresh_hashes(self) -> set[str]:
        with self.engine.connect() as connection:
            return set(connection.execute(select(store.RefreshTokenRow.token_hash)).scalars())

    def counted(self, key: str) -> int:
        """The settled attempts (failures, registrations) recorded against `key`."""
        row = store.LoginFailureRow
        statement = select(func.count()).where(row.key == key, row.pending_until.is_(None))
        with self.engine.connect() as connection:
            return int(connection.execute(statement).scalar_one())


def open_local(path: Path, settings: IdentitySettings = SETTINGS) -> LocalAuth:
    """Every part of the auth domain over a new SQLite database at `path`, wired as
    ``services/auth/__main__.py`` wires them, with one clock starting now (tokens it mints
    verify against the real time)."""
    engine = db.connect(DatabaseSettings(url=f"sqlite:///{path}"), migrations=MIGRATIONS)
    auth_store = store.AuthStore(engine, Outbox(store.BUS, source="auth", routing=consumer_routing()))
    clock = Clock(now=dt.datetime.now(dt.UTC))
    ring = tokens.KeyRing(auth_store, secrets.token_bytes(32), clock=clock)
    ring.ensure()
    minter = tokens.JwtMinter(ring, AuthSettings(), settings.access_token_seconds)
    verifier = authn.Verifier(authn.KeySet(ring.jwks), AuthSettings())
    transactions = auth_store.transaction
    hasher = passwords.Argon2Hasher(settings)
    throttle = Throttle(transactions, settings, clock)
    sessions = Sessions(transactions, minter, settings, clock)
    signin = SignIn(transactions, hasher, throttle, sessions)
    issuer = AuthSettings().issuer
    clients = Clients(transactions, hasher, minter, throttle, settings, clock)
    codes = Codes(transactions, sessions, clock)
    oauth = OAuthServer(transactions, codes, sessions, clients, minter, issuer, clock)
    guard = forms.FormGuard(forms.derive_key(secrets.token_bytes(32)), issuer)
    return LocalAuth(
        engine=engine,
        auth_store=auth_store,
        clock=clock,
        throttle=throttle,
        accounts=Accounts(transactions, hasher, throttle, passwords.password_problem, clock),
        signin=signin,
        sessions=sessions,
        clients=clients,
        verifier=verifier,
        oauth=oauth,
        authorize=Authorize(oauth, signin, guard),
        ring=ring,
    )
