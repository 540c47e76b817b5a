"""gateway.config: backend targets and their transports, and Polyservice's POLY_* settings
as an EdgeConfig."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import (
    Target,
    Transport,
    default_descriptor_set,
    from_environment,
    parse_target,
)
from gateway.tls import CertificateFiles
from services.kit import config
from tests.support.env import make_certs


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("h:1", Transport("tls")),
        ("h:1,plaintext", Transport("plaintext")),
        ("h:1,cacert={ca}", Transport("tls", Path("{ca}"))),
        (
            "h:1,cacert={ca},cert={cert},key={key}",
            Transport("mtls", Path("{ca}"), Path("{cert}"), Path("{key}")),
        ),
        (
            "h:1,cert={cert},key={key},server-name=api",
            Transport("mtls", None, Path("{cert}"), Path("{key}"), "api"),
        ),
    ],
    ids=["default", "plaintext", "tls-with-ca", "mtls", "mtls-system-roots-and-name"],
)
def test_targets(text: str, expected: Transport, pem: dict[str, Path]) -> None:
    names = {name: str(path) for name, path in pem.items()}
    problems: list[str] = []
    found = parse_target(text.format(**names), Transport("tls"), problems, where="t")
    assert problems == []
    assert found == Target(
        "h:1",
        Transport(
            expected.mode,
            *(
                Path(str(p).format(**names)) if p else None
                for p in (expected.ca_file, expected.cert_file, expected.key_file)
            ),
            expected.server_name,
        ),
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("nohost", "expected an address host:port"),
        ("h:1,tls", "unknown transport setting 'tls'"),
        ("h:1,plaintext,cacert={ca}", "plaintext cannot be combined"),
        ("h:1,cert={cert}", "cert and key go together"),
        ("h:1,cacert=/nowhere/ca.pem", "cacert file /nowhere/ca.pem cannot be read: No such file"),
        ("h:1,cacert={directory}", "cannot be read: Is a directory"),
        ("h:99999", "expected an address host:port"),
        ("h:1,plaintext,server-name=api", "plaintext cannot be combined"),
    ],
    ids=[
        "no-port",
        "unknown-setting",
        "plaintext-and-ca",
        "cert-without-key",
        "missing-file",
        "unreadable-file",
        "port-out-of-range",
        "plaintext-with-a-name-to-verify",
    ],
)
def test_bad_targets_are_problems(text: str, problem: str, pem: dict[str, Path]) -> None:
    problems: list[str] = []
    text = text.format(ca=pem["ca"], cert=pem["cert"], directory=pem["ca"].parent)
    found = parse_target(text, Transport(), problems, where="t")
    assert found is None
    assert any(problem in p for p in problems), problems


def test_polyservice_settings_become_mtls_targets_proving_each_component(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    _, found = from_environment(
        {
            "POLY_HOME": str(tmp_path),
            "POLY_TLS_DIR": str(certs),
            "POLY_GATEWAY_RATE_PER_SECOND": "7",
            "POLY_GATEWAY_TRUSTED_PROXIES": "10.0.0.1/8, 192.0.2.7",
            "POLY_GATEWAY_AUTH_FAILURES_PER_ADDRESS": "0",
        },
    )
    assert found.title == "Polyservice" and found.descriptor_set == default_descriptor_set()
    orders = found.backends["poly.orders.v1.OrdersService"]
    assert orders.transport == Transport(
        "mtls", certs / "ca.crt", certs / "gateway.crt", certs / "gateway.key", "orders"
    )
    assert found.limits.rate_per_second == 7.0 and found.default_backend is None
    assert found.limits.trusted_proxies == ("10.0.0.0/8", "192.0.2.7/32")
    assert found.limits.auth_failures_per_address == 0


def test_polyservice_settings_verify_tokens_against_the_auth_services_keys(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    environ = {
        "POLY_HOME": str(tmp_path),
        "POLY_TLS_DIR": str(certs),
        "POLY_AUTH_ADDRESS": "auth.internal:6001",
        "POLY_AUTH_ISSUER": "https://id.example",
        "POLY_AUTH_AUDIENCE": "shop",
        "POLY_AUTH_JWKS_MIN_REFRESH_SECONDS": "3",
        "POLY_CLIENT_DEADLINE_SECONDS": "2",
    }
    _, found = from_environment(environ)
    assert found.tokens is not None
    assert found.tokens.keys_from == Target(
        "auth.internal:6001",
        Transport("mtls", certs / "ca.crt", certs / "gateway.crt", certs / "gateway.key", "auth"),
    )
    auth = found.tokens.auth
    assert (auth.issuer, auth.audience, auth.jwks_min_refresh_seconds) == ("https://id.example", "shop", 3.0)
    assert found.tokens.timeout_seconds == 2.0


def test_a_trusted_proxy_that_is_not_an_address_fails_start_up(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError) as raised:
        from_environment({"POLY_HOME": str(tmp_path), "POLY_GATEWAY_TRUSTED_PROXIES": "proxy.internal"})
    assert any("POLY_GATEWAY_TRUSTED_PROXIES" in p for p in raised.value.problems), raised.value.problems


def test_the_key_file_stays_out_of_reprs() -> None:
    assert "secret.key" not in repr(Transport("mtls", None, Path("c.pem"), Path("secret.key")))


def test_polyservice_settings_turn_on_client_spans_and_the_public_endpoint(tmp_path: Path) -> None:
    _, defaults = from_environment({"POLY_HOME": str(tmp_path)})
    assert (defaults.client_spans, defaults.public_endpoint) == (False, False), "a development edge"
    environ = {
        "POLY_HOME": str(tmp_path),
        "POLY_GATEWAY_CLIENT_SPANS": "true",
        "POLY_GATEWAY_PUBLIC_ENDPOINT": "1",
        "POLY_GATEWAY_TRUSTED_PROXIES": "10.0.0.1/8",
    }
    _, found = from_environment(environ)
    assert (found.client_spans, found.public_endpoint) == (True, True)
    assert found.limits.trusted_proxies == ("10.0.0.0/8",), "whose trace context it continues"


def test_client_spans_and_the_public_endpoint_settings_must_be_true_or_false(tmp_path: Path) -> None:
    environ = {
        "POLY_HOME": str(tmp_path),
        "POLY_GATEWAY_CLIENT_SPANS": "2",
        "POLY_GATEWAY_PUBLIC_ENDPOINT": "maybe",
    }
    with pytest.raises(config.ConfigError) as raised:
        from_environment(environ)
    assert raised.value.problems == [
        "POLY_GATEWAY_CLIENT_SPANS: expected true or false, got '2'",
        "POLY_GATEWAY_PUBLIC_ENDPOINT: expected true or false, got 'maybe'",
    ]


def test_polyservice_settings_serve_https_from_the_gateways_certificate_settings(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    environ = {
        "POLY_HOME": str(tmp_path),
        "POLY_GATEWAY_TLS_CERT": str(certs / "gateway.crt"),
        "POLY_GATEWAY_TLS_KEY": str(certs / "gateway.key"),
        "POLY_GATEWAY_HTTP2": "false",
    }
    _, found = from_environment(environ)
    assert found.serving_tls == CertificateFiles(certs / "gateway.crt", certs / "gateway.key")
    assert not found.http2
    _, defaults = from_environment({"POLY_HOME": str(tmp_path)})
    assert defaults.serving_tls is None and defaults.http2, "plain HTTP and HTTP/2 by default"


def test_a_serving_certificate_without_its_key_fails_start_up(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    with pytest.raises(config.ConfigError) as raised:
        from_environment({"POLY_HOME": str(tmp_path), "POLY_GATEWAY_TLS_CERT": str(certs / "gateway.crt")})
    assert any("POLY_GATEWAY_TLS_KEY" in p for p in raised.value.problems), raised.value.problems
