"""The users domain over its real store (SQLite and PostgreSQL): the races the database decides.

Profile creation is idempotent, a stale etag never wins, and of concurrent deletes exactly
one publishes UserDeleted.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from services.kit import db
from services.kit.bus import Outbox, consumer_routing
from services.kit.config import DatabaseSettings
from services.kit.domain_errors import Aborted, DomainError
from services.users import store
from services.users.domain import ACTIVE, DELETED, PreferencesChange, ProfileChange, Users, create_profile

pytestmark = pytest.mark.slow

MIGRATIONS = Path(store.__file__).with_name("migrations")


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'users.db'}"
    if request.param == "postgresql":
        make: Callable[[], str] = request.getfixturevalue("postgres_databases")
        url = make()
    connected = db.connect(DatabaseSettings(url=url), migrations=MIGRATIONS)
    try:
        yield connected
    finally:
        connected.dispose()


@pytest.fixture
def users_store(engine: Engine) -> store.UsersStore:
    outbox = Outbox(store.BUS, source="users", routing=consumer_routing())
    return store.UsersStore(engine, outbox)


def _profile(users_store: store.UsersStore, display_name: str = "Ada") -> str:
    user_id = str(uuid.uuid4())
    with users_store.transaction() as repo:
        create_profile(repo, user_id, f"{user_id[:8]}@example.com", display_name, dt.datetime.now(dt.UTC))
    return user_id


def _race(count: int, attempt: Callable[[], object]) -> list[object]:
    """Run `attempt` in `count` threads released together; each result or domain error."""
    barrier = threading.Barrier(count)
    results: list[object] = []

    def run() -> None:
        barrier.wait()
        try:
            results.append(attempt())
        except DomainError as error:
            results.append(error)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_a_repeated_registration_changes_nothing(users_store: store.UsersStore) -> None:
    user_id = _profile(users_store, "First")
    users = Users(users_store.transaction)
    before = users.get(user_id)
    with users_store.transaction() as repo:
        create_profile(repo, user_id, "other@example.com", "Second", dt.datetime.now(dt.UTC))
    assert users.get(user_id) == before
    assert (before.display_name, before.state, before.version) == ("First", ACTIVE, 1)


def test_a_display_name_auth_accepted_is_cleaned_not_refused(users_store: store.UsersStore) -> None:
    user_id = _profile(users_store, "Ada\x00\nLovelace" + "x" * 80)
    found = Users(users_store.transaction).get(user_id)
    assert found.display_name.startswith("AdaLovelace") and len(found.display_name) == 63


def test_of_concurrent_updates_with_one_etag_exactly_one_wins(users_store: store.UsersStore) -> None:
    user_id = _profile(users_store)
    users = Users(users_store.transaction)
    etag = users.get(user_id).etag
    results = _race(
        6, lambda: users.update(user_id, ["display_name"], ProfileChange(f"n-{uuid.uuid4().hex[:6]}"), etag)
    )
    winners = [r for r in results if not isinstance(r, DomainError)]
    assert len(winners) == 1, results
    assert all(isinstance(r, Aborted) and r.reason == "ETAG_MISMATCH" for r in results if r not in winners)
    assert users.get(user_id).version == 2


def test_of_concurrent_deletes_exactly_one_publishes(users_store: store.UsersStore, engine: Engine) -> None:
    user_id = _profile(users_store)
    users = Users(users_store.transaction)
    results = _race(6, lambda: users.delete(user_id, ""))
    assert all(not isinstance(r, DomainError) for r in results), results
    deleted = users.get(user_id)
    assert deleted.state == DELETED and deleted.delete_time is not None
    assert all(r == deleted for r in results)
    outbox = store.BUS.outbox
    with engine.connect() as connection:
        published = connection.scalar(
            select(func.count()).where(
                outbox.c.aggregate_id == f"users/{user_id}",
                outbox.c.event_type == "poly.events.v1.UserDeleted",
            )
        )
    assert published == 1


def test_common_bcp47_tags_are_accepted_and_empty_means_the_default(users_store: store.UsersStore) -> None:
    user_id = _profile(users_store)
    users = Users(users_store.transaction)
    for locale in ("en", "en-GB", "pt-BR", "zh-Hant-TW", "es-419", "de-CH-1996", "EN-gb"):
        written = users.update_preferences(user_id, ["locale"], PreferencesChange(locale=locale))
        assert written.locale == locale
    users.update_preferences(user_id, ["locale"], PreferencesChange(locale=""))
    assert users.contact(user_id).locale == "en"


def test_a_foreign_etag_is_stale_not_an_error_of_the_server(users_store: store.UsersStore) -> None:
    user_id = _profile(users_store)
    users = Users(users_store.transaction)
    for etag in ("v1", 'W/"1', 'W/"99999999999999999999"', "1", 'W/"2"'):
        with pytest.raises(Aborted):
            users.update(user_id, ["display_name"], ProfileChange("x"), etag)
    assert (
        users.update(user_id, ["display_name"], ProfileChange("x"), users.get(user_id).etag).display_name
        == "x"
    )
