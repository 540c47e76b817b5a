"""Each service's declaration (`services/<name>/__main__.py`), wired as `kit.app.run` wires it:
over its own migrated database, a real outbox and real (lazily dialled) channels."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from services.auth import keys
from services.cli import system_settings
from services.kit import app, bus, clients, config, db
from services.kit.bus import contract


def _declaration(service: str) -> app.Service:
    declared = importlib.import_module(f"services.{service}.__main__").SERVICE
    assert isinstance(declared, app.Service)
    return declared


@pytest.fixture(params=config.SERVICES)
def wired(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[app.Service, app.Parts]:
    service = _declaration(request.param)
    environ = {"POLY_HOME": str(tmp_path)}
    settings, own = config.load_with(service.name, service.settings, environ)
    keys.ensure_key_encryption_key(system_settings.load(environ).key_encryption_key_file)  # as `poly up` does
    engine = db.connect(settings.db, migrations=service.migrations)
    request.addfinalizer(engine.dispose)
    channels = clients.Channels(settings)
    request.addfinalizer(channels.close)
    outbox = bus.Outbox(service.bus_tables, source=service.name, routing=bus.routing(settings.bus))
    context = app.Context(settings, own, engine, outbox, channels)
    return service, service.wire(context)


def test_a_declaration_names_its_own_api_and_migrations(wired: tuple[app.Service, app.Parts]) -> None:
    service, parts = wired
    assert service.api.full_name.startswith(f"poly.{service.name}.v1.")
    assert (service.migrations / "env.py").is_file()
    # The servicer implements the declared API (the generated base class carries its methods).
    for method in service.api.methods:
        assert callable(getattr(parts.servicer, method.name))


def test_a_service_handles_exactly_the_events_it_is_a_declared_consumer_of(
    wired: tuple[app.Service, app.Parts],
) -> None:
    service, parts = wired
    handled = {event.DESCRIPTOR.full_name for event in parts.handlers}
    assert handled == contract.consumed_by(service.name)


def test_background_work_and_peers_are_declared_where_the_service_is(
    wired: tuple[app.Service, app.Parts],
) -> None:
    # The saga's payment step (orders calls payments) and the dispatcher (notifications reads
    # contacts from users) are workers of their declarations; the others run only the bus.
    service, parts = wired
    expected = {
        "orders": (["PaymentWorker", "Recheck"], {"payments"}),
        "notifications": (["Dispatcher"], {"users"}),
    }
    workers, peers = expected.get(service.name, ([], set()))
    assert [type(worker).__name__ for worker in parts.workers] == workers
    assert set(service.calls) == peers


def test_workers_start_and_stop(wired: tuple[app.Service, app.Parts]) -> None:
    _, parts = wired
    for worker in parts.workers:
        worker.start()
    for worker in reversed(parts.workers):
        worker.stop(timeout=5.0)


def test_auth_checks_tokens_with_its_own_keys_and_the_others_ask_auth(
    wired: tuple[app.Service, app.Parts],
) -> None:
    service, parts = wired
    assert (parts.verifier is not None) == (service.name == "auth")
