from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from services.kit import config, tls


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def issued(tmp_path: Path) -> Path:
    tls.ensure_certificates(tmp_path / "certs", config.COMPONENTS)
    return tmp_path / "certs"


@pytest.mark.parametrize("name", config.COMPONENTS)
def test_each_certificate_has_exactly_one_spiffe_uri_and_the_dns_names(issued: Path, name: str) -> None:
    certificate = _load(issued / f"{name}.crt")
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"spiffe://poly.local/ns/default/sa/{name}"
    ]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", name, f"{name}.default.svc.cluster.local"]
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
    # The operator's certificate only calls; it must not be able to pose as a server.
    assert (ExtendedKeyUsageOID.SERVER_AUTH in usages) == (name != "cli")
    assert certificate.issuer == _load(issued / "ca.crt").subject


def test_private_keys_are_owner_only(issued: Path) -> None:
    keys = sorted(issued.glob("*.key"))
    assert len(keys) == len(config.COMPONENTS) + 1  # plus the CA
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_existing_files_are_kept_unless_forced(issued: Path) -> None:
    before = {p.name: p.read_bytes() for p in issued.iterdir()}
    again = tls.ensure_certificates(issued, config.COMPONENTS)
    assert again.written == []
    assert {p.name: p.read_bytes() for p in issued.iterdir()} == before

    rotated = tls.ensure_certificates(issued, ["orders"], force=True)
    assert rotated.written == [issued / "orders.crt"]
    assert (issued / "ca.crt").read_bytes() == before["ca.crt"], "rotation never replaces the CA"
    assert (issued / "orders.crt").read_bytes() != before["orders.crt"]
    assert (issued / "users.crt").read_bytes() == before["users.crt"]


def test_spiffe_id_follows_trust_domain_and_namespace() -> None:
    assert tls.spiffe_id("orders", trust_domain="example.org", namespace="shop") == (
        "spiffe://example.org/ns/shop/sa/orders"
    )


@pytest.mark.parametrize("lost", ["ca.key", "ca.crt"])
def test_a_half_present_ca_is_never_silently_replaced(issued: Path, lost: str) -> None:
    kept = {p.name: p.read_bytes() for p in issued.iterdir() if p.name != lost}
    (issued / lost).unlink()
    with pytest.raises(tls.CertificateError, match=r"only one of ca\.crt and ca\.key"):
        tls.ensure_certificates(issued, config.COMPONENTS)
    assert {p.name: p.read_bytes() for p in issued.iterdir()} == kept
