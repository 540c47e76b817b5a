"""Payments for a module's tests: one auth + payments deployment per database backend
(`system`), or the use cases over a migrated SQLite file and no server (`local`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.payments.helpers import System
from tests.payments.local import LocalPayments, open_local, paypal_provider, stripe_provider
from tests.support.identity import start
from tests.support.paypal_api import LocalPayPal, local_paypal
from tests.support.stripe_api import LocalStripe, local_stripe


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def system(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    database = {}
    if request.param == "postgresql":
        make: Callable[[], str] = request.getfixturevalue("postgres_databases")
        database = {"POLY_PAYMENTS_DATABASE_URL": make()}
    home: Path = tmp_path_factory.mktemp(f"payments-{request.param}")
    # Only auth and payments run: events for the absent consumers wait in the outboxes.
    deployment = start(home, ["auth", "payments"], database)
    try:
        yield System(deployment, deployment.create_admin())
    finally:
        deployment.stop()


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalPayments]:
    """A fresh database for one test."""
    opened = open_local(tmp_path / "payments.db")
    try:
        yield opened
    finally:
        opened.engine.dispose()


@pytest.fixture(scope="module")
def shared_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPayments]:
    """One database for a module's tests (property tests: each example opens new accounts)."""
    opened = open_local(tmp_path_factory.mktemp("payments-local") / "payments.db")
    try:
        yield opened
    finally:
        opened.engine.dispose()


@pytest.fixture
def stripe_api() -> Iterator[LocalStripe]:
    """A local Stripe API; every request it got must have fit the SDK's parameter types."""
    with local_stripe() as api:
        yield api
        assert api.violations == [], "requests outside the SDK's parameter types"


@pytest.fixture
def stripe_local(tmp_path: Path, stripe_api: LocalStripe) -> Iterator[LocalPayments]:
    """Payments held by Stripe (`stripe_api`), over a fresh database; its ledger must balance
    and its running totals agree with its entries afterwards."""
    opened = open_local(tmp_path / "payments.db", stripe_provider(stripe_api))
    try:
        yield opened
        assert opened.unbalanced_transactions() == []
        assert opened.drifted_totals() == {}
    finally:
        opened.engine.dispose()


@pytest.fixture
def paypal_api() -> Iterator[LocalPayPal]:
    """A local PayPal API; every request it got and every answer it gave must have fit
    PayPal's published OpenAPI documents."""
    with local_paypal() as api:
        yield api
        assert api.violations == [], "requests or answers outside PayPal's OpenAPI documents"


@pytest.fixture
def paypal_local(tmp_path: Path, paypal_api: LocalPayPal) -> Iterator[LocalPayments]:
    """Payments held by PayPal (`paypal_api`), over a fresh database, checked as `stripe_local`."""
    opened = open_local(tmp_path / "payments.db", paypal_provider(paypal_api))
    try:
        yield opened
        assert opened.unbalanced_transactions() == []
        assert opened.drifted_totals() == {}
    finally:
        opened.engine.dispose()
