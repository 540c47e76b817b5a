from __future__ import annotations

from pathlib import Path

import pytest

from services.kit import config


def test_defaults_put_state_under_poly_home(tmp_path: Path) -> None:
    settings = config.load("orders", {"POLY_HOME": str(tmp_path)})
    assert settings.server.port == 50053
    assert settings.server.host == "127.0.0.1"
    assert settings.db.url == f"sqlite:///{tmp_path / 'data' / 'orders.db'}"
    assert settings.tls.cert_file == tmp_path / "certs" / "orders.crt"
    assert settings.tls.ca_file == tmp_path / "certs" / "ca.crt"
    assert settings.peers["payments"] == "localhost:50054"


def test_per_service_variables_override(tmp_path: Path) -> None:
    settings = config.load(
        "payments",
        {
            "POLY_HOME": str(tmp_path),
            "POLY_PAYMENTS_PORT": "6000",
            "POLY_PAYMENTS_DATABASE_URL": "postgresql://poly:s3cret@db/payments",
            "POLY_ORDERS_ADDRESS": "orders.default.svc.cluster.local:50053",
            "POLY_GRACE_SECONDS": "2.5",
        },
    )
    assert settings.server.port == 6000
    assert settings.server.grace_seconds == 2.5
    assert settings.peers["orders"] == "orders.default.svc.cluster.local:50053"
    assert settings.db.url.endswith("@db/payments")


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.load(
            "orders",
            {
                "POLY_ORDERS_PORT": "eighty",
                "POLY_GRACE_SECONDS": "-1",
                "POLY_DB_MIGRATE": "maybe",
                "POLY_LOG_LEVEL": "loud",
            },
        )
    problems = "\n".join(caught.value.problems)
    for name in ("POLY_ORDERS_PORT", "POLY_GRACE_SECONDS", "POLY_DB_MIGRATE", "POLY_LOG_LEVEL"):
        assert name in problems
    assert len(caught.value.problems) == 4


def test_unknown_component_is_refused() -> None:
    with pytest.raises(config.ConfigError, match="unknown component"):
        config.load("billing", {})


def test_secrets_never_show_in_a_repr(tmp_path: Path) -> None:
    settings = config.load("auth", {"POLY_AUTH_DATABASE_URL": "postgresql://poly:hunter2@db/auth"})
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in repr(settings.db)
    assert "poly:***@db/auth" in repr(settings.db)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("sqlite:///x.db", "sqlite:///x.db"),
        ("postgresql://u@h/d", "postgresql://u@h/d"),
        ("postgresql://u:p@h/d", "postgresql://u:***@h/d"),
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
    ],
    ids=["no-credentials", "user-only", "password", "amqp"],
)
def test_redact_url(url: str, shown: str) -> None:
    assert config.redact_url(url) == shown


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = config.load("users", {"POLY_HOME": str(tmp_path)})
    with pytest.raises(AttributeError):
        settings.service = "orders"  # type: ignore[misc]


def test_an_unparsable_database_url_is_a_configuration_problem() -> None:
    with pytest.raises(config.ConfigError, match="POLY_USERS_DATABASE_URL: not a database URL"):
        config.load("users", {"POLY_USERS_DATABASE_URL": "nonsense"})


@pytest.mark.parametrize(
    ("environ", "issuer"),
    [
        ({}, "http://localhost:8080"),
        ({"POLY_GATEWAY_PORT": "8180"}, "http://localhost:8180"),
        (
            {"POLY_GATEWAY_PORT": "8180", "POLY_AUTH_ISSUER": "https://id.example.com/"},
            "https://id.example.com",
        ),
    ],
    ids=["default", "follows-the-edge-port", "explicit-wins"],
)
def test_the_token_issuer_is_the_public_edge(environ: dict[str, str], issuer: str) -> None:
    assert config.load("auth", environ).auth.issuer == issuer


@pytest.mark.parametrize(
    "url",
    ["amqp://h:abc/", "amqp://", "amqp://guest:guest@[::1:5672/", "http://rabbit:5672/", "amqp://h:70000/"],
    ids=["port-not-a-number", "no-host", "broken-ipv6", "not-amqp", "port-out-of-range"],
)
def test_a_broker_url_no_client_can_dial_is_a_configuration_problem(url: str) -> None:
    with pytest.raises(config.ConfigError, match="POLY_BUS_URL: expected amqp://"):
        config.load("orders", {"POLY_BUS_URL": url})


@pytest.mark.parametrize(
    "url", ["amqp://guest:guest@127.0.0.1:5672/", "amqps://rabbit.internal/prod", "amqp://[::1]:5672/"]
)
def test_broker_urls_clients_can_dial_are_taken(url: str) -> None:
    assert config.load("orders", {"POLY_BUS_URL": url}).bus.url == url


def test_credentials_can_come_from_files_named_by_file_variables(tmp_path: Path) -> None:
    # A mounted Secret: the value stays out of the process's environment.
    (tmp_path / "database-url").write_text("postgresql://orders:s3cret@db:5432/orders\n")
    (tmp_path / "bus-url").write_text("amqps://orders:s3cret@broker:5671/\n")
    settings = config.load(
        "orders",
        {
            "POLY_ORDERS_DATABASE_URL_FILE": str(tmp_path / "database-url"),
            "POLY_BUS_URL_FILE": str(tmp_path / "bus-url"),
        },
    )
    assert settings.db.url.endswith("@db:5432/orders") and settings.bus.url.endswith("@broker:5671/")


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        (
            {"POLY_BUS_URL": "amqp://x:s3cret@a/", "POLY_BUS_URL_FILE": "{dir}/bus-url"},
            "POLY_BUS_URL and POLY_BUS_URL_FILE: set one of them, not both",
        ),
        ({"POLY_BUS_URL_FILE": "{dir}/missing"}, "POLY_BUS_URL_FILE: cannot read {dir}/missing"),
        ({"POLY_BUS_URL_FILE": "{dir}/empty"}, "POLY_BUS_URL_FILE: {dir}/empty is empty"),
    ],
    ids=["both", "missing-file", "empty-file"],
)
def test_a_credential_file_that_cannot_be_used_is_a_problem_that_never_shows_a_value(
    tmp_path: Path, environ: dict[str, str], problem: str
) -> None:
    (tmp_path / "bus-url").write_text("amqp://x:s3cret@b/")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(config.ConfigError) as raised:
        config.load("orders", {key: value.format(dir=tmp_path) for key, value in environ.items()})
    assert problem.format(dir=tmp_path) in raised.value.problems[0]
    assert "s3cret" not in str(raised.value)


def test_a_service_reads_its_own_settings_with_the_kits_and_both_problems_are_listed() -> None:
    def read(env: config.Reader, settings: config.Settings) -> str:
        return env.text("POLY_EXAMPLE_COLOUR", "blue")

    settings, colour = config.load_with("users", read, {"POLY_EXAMPLE_COLOUR": "green"})
    assert (settings.service, colour) == ("users", "green")
    with pytest.raises(config.ConfigError) as caught:
        config.load_with("users", read, {"POLY_EXAMPLE_COLOUR": " ", "POLY_LOG_LEVEL": "LOUD"})
    assert [p.split(":")[0] for p in caught.value.problems] == ["POLY_LOG_LEVEL", "POLY_EXAMPLE_COLOUR"]
