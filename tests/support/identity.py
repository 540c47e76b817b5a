"""Services started as processes the way `poly up` starts them, and callers of them.

`Deployment` runs ``python -m services.<name>`` for the chosen services on free ports with
real certificates, a key-encryption key, and argon2 parameters cheap enough for tests.
`channel(peer, as_=component)` dials a service with any component's certificate (the CLI's
by default, the gateway's or a service's to test INTERNAL policies).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import jwt
import pytest

from poly.auth.v1 import auth_service_pb2 as auth_pb
from poly.auth.v1 import auth_service_pb2_grpc
from poly.payments.v1 import payments_service_pb2 as payments_pb
from poly.payments.v1 import payments_service_pb2_grpc
from poly.type.v1.money_pb2 import Money
from services.auth import keys
from services.cli import system_settings
from services.kit import clients, config, tls
from tests.support.env import poly_environ, settings_for
from tests.support.processes import Process, health_check, run_module
from tests.support.waiting import eventually

__all__ = ["CHEAP_ARGON2", "PASSWORD", "Deployment", "bearer", "signed_by_a_new_key", "start"]

CHEAP_ARGON2 = {
    "POLY_AUTH_ARGON2_TIME_COST": "1",
    "POLY_AUTH_ARGON2_MEMORY_KIB": "8192",
    "POLY_AUTH_ARGON2_PARALLELISM": "1",
}
PASSWORD = "violet-harbour-lantern-42"


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@dataclass
class Deployment:
    home: Path
    environ: dict[str, str]
    processes: dict[str, Process] = field(default_factory=dict)
    _channels: list[grpc.Channel] = field(default_factory=list)

    def settings(self, component: str = "cli") -> config.Settings:
        return settings_for(component, self.environ)

    def channel(self, peer: str, *, as_: str = "cli") -> grpc.Channel:
        opened = clients.channel(self.settings(as_), peer)
        self._channels.append(opened)
        return opened

    def auth(self, *, as_: str = "cli") -> auth_service_pb2_grpc.AuthServiceStub:
        return auth_service_pb2_grpc.AuthServiceStub(self.channel("auth", as_=as_))

    def register(self, email: str | None = None) -> tuple[str, str]:
        """A new account: ``(users/{id}, email)``."""
        email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
        reply = self.auth().Register(auth_pb.RegisterRequest(email=email, password=PASSWORD), timeout=10)
        return reply.user, email

    def login(self, email: str, password: str = PASSWORD) -> auth_pb.TokenSet:
        reply: auth_pb.TokenSet = self.auth().Login(
            auth_pb.LoginRequest(email=email, password=password), timeout=10
        )
        return reply

    def own_account(self, token: str) -> str:
        """The name of the account opened for `token`'s user (from UserRegistered), once it
        exists. Asked as that user, who sees only their own (an admin would see everyone's)."""
        payments = payments_service_pb2_grpc.PaymentsServiceStub(self.channel("payments"))

        def opened() -> str | None:
            found = payments.ListAccounts(
                payments_pb.ListAccountsRequest(), metadata=bearer(token), timeout=10
            )
            return found.accounts[0].name if found.accounts else None

        return eventually(opened, what="the user's account")

    def fund(self, account: str, admin: list[tuple[str, str]], amount_minor: int) -> None:
        """An admin's FundAccount of `amount_minor` euro cents into `account`."""
        payments_service_pb2_grpc.PaymentsServiceStub(self.channel("payments")).FundAccount(
            payments_pb.FundAccountRequest(
                name=account,
                amount=Money(currency_code="EUR", amount_minor=amount_minor),
                request_id=str(uuid.uuid4()),
            ),
            metadata=admin,
            timeout=10,
        )

    def create_admin(self, email: str = "root@example.com") -> str:
        """An admin's access token; the admin is made with ``poly admin create``, as an
        operator would (repeatable: an existing account just gains the role)."""
        created = run_module(
            "services.cli",
            self.environ,
            "admin",
            "create",
            "--email",
            email,
            "--password-stdin",
            stdin=PASSWORD + "\n",
        )
        assert created.returncode == 0, created.stderr
        assert "with the admin role" in created.stdout or "is an admin" in created.stdout, created.stdout
        return self.login(email).access_token

    def start(self, names: Sequence[str]) -> None:
        for name in names:
            self.processes[name] = Process.module(f"services.{name}", self.environ)
        cli = self.settings()
        for name in names:
            assert health_check(cli, cli.peers[name]) == "SERVING", self.processes[name].output()

    def restart(self, name: str) -> None:
        self.processes.pop(name).stop()
        self.start([name])

    def stop(self) -> None:
        for opened in self._channels:
            opened.close()
        for process in self.processes.values():
            process.stop()


def start(home: Path, services: Sequence[str], extra: Mapping[str, str] | None = None) -> Deployment:
    tls.ensure_certificates(home / "certs", config.COMPONENTS)
    environ = poly_environ(home, None, **{**CHEAP_ARGON2, **dict(extra or {})})  # `extra` may override
    deployment = Deployment(home, environ)
    keys.ensure_key_encryption_key(system_settings.load(deployment.environ).key_encryption_key_file)
    try:
        deployment.start(services)
    except BaseException:
        deployment.stop()
        raise
    return deployment


def signed_by_a_new_key(system: Deployment, email: str, before: list[tuple[str, str]]) -> str:
    """A fresh token signed by the rotated-in key, once that key has begun signing."""
    old_kid = jwt.get_unverified_header(before[0][1].removeprefix("Bearer "))["kid"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        token = system.login(email).access_token
        if jwt.get_unverified_header(token)["kid"] != old_kid:
            return token
        time.sleep(0.1)
    raise AssertionError("the rotated-in key never began signing")


@contextmanager
def auth_alone(
    request: pytest.FixtureRequest, home: Path, settings: Mapping[str, str]
) -> Iterator[Deployment]:
    """The auth service by itself with `settings`, on SQLite, or on a fresh PostgreSQL
    database when the fixture's parameter is ``"postgresql"``."""
    database = {}
    if request.param == "postgresql":
        make: Callable[[], str] = request.getfixturevalue("postgres_databases")
        database = {"POLY_AUTH_DATABASE_URL": make()}
    deployment = start(home, ["auth"], {**settings, **database})
    try:
        yield deployment
    finally:
        deployment.stop()
