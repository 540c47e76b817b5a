from __future__ import annotations

import datetime as dt
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf import wrappers_pb2

from services.kit import config, server, tls
from tests.support import probe_service


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


def _two_uri_certificate(authority: tls.CertificateAuthority) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "twin")]))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(tls.spiffe_id("orders")),
                    x509.UniformResourceIdentifier(tls.spiffe_id("payments")),
                ]
            ),
            critical=False,
        )
        .sign(authority.key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.fixture
def who_am_i(certs: Path) -> Iterator[Callable[[grpc.ChannelCredentials], str]]:
    settings = config.load("orders", {"POLY_TLS_DIR": str(certs), "POLY_ORDERS_PORT": "0"})
    running = server.start(settings, [probe_service.registration()])

    def ask(credentials: grpc.ChannelCredentials) -> str:
        with grpc.secure_channel(f"localhost:{running.port}", credentials) as channel:
            answer: str = probe_service.stub(channel, "WhoAmI")(wrappers_pb2.StringValue(), timeout=5).value
            return answer

    try:
        yield ask
    finally:
        running.drain()


@pytest.mark.parametrize("caller", ["cli", "gateway", "orders", "notifications"])
def test_peer_identity_is_the_callers_spiffe_id(
    certs: Path, who_am_i: Callable[[grpc.ChannelCredentials], str], caller: str
) -> None:
    settings = config.load(caller, {"POLY_TLS_DIR": str(certs)})
    assert who_am_i(tls.channel_credentials(settings.tls)) == f"spiffe://poly.local/ns/default/sa/{caller}"


def test_a_certificate_with_two_spiffe_ids_has_no_identity(
    certs: Path, who_am_i: Callable[[grpc.ChannelCredentials], str]
) -> None:
    chain, key = _two_uri_certificate(tls.load_authority(certs))
    credentials = grpc.ssl_channel_credentials((certs / "ca.crt").read_bytes(), key, chain)
    assert who_am_i(credentials) == "", "an ambiguous certificate names nobody"


def test_the_files_stamp_changes_when_a_certificate_is_rotated(issued: Path) -> None:
    settings = config.load("orders", {"POLY_TLS_DIR": str(issued)}).tls
    before = tls.files_stamp(settings)
    assert tls.files_stamp(settings) == before
    tls.ensure_certificates(issued, ["orders"], force=True)
    assert tls.files_stamp(settings) != before


def _kubelet_writes(volume: Path, source: Path, generation: str) -> None:
    """What the kubelet does to a Secret or projected volume (its AtomicWriter): the files in a
    new timestamped folder, then the ``..data`` link swapped to it in one rename; the names
    the pod reads are links through ``..data``."""
    folder = volume / f"..{generation}"
    folder.mkdir()
    for name in ("ca.crt", "tls.crt", "tls.key"):
        original = {"ca.crt": "ca.crt", "tls.crt": "orders.crt", "tls.key": "orders.key"}[name]
        (folder / name).write_bytes((source / original).read_bytes())
    (volume / "..data_tmp").symlink_to(folder.name)
    (volume / "..data_tmp").replace(volume / "..data")
    for name in ("ca.crt", "tls.crt", "tls.key"):
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(f"..data/{name}")


def test_a_certificate_renewed_in_a_kubernetes_volume_is_picked_up(issued: Path, tmp_path: Path) -> None:
    # cert-manager renews the Secret; the kubelet swaps the volume's ..data link (README, Kubernetes).
    volume = tmp_path / "volume"
    volume.mkdir()
    _kubelet_writes(volume, issued, "2026_12_04_first")
    settings = config.load(
        "orders",
        {
            "POLY_TLS_CA_FILE": str(volume / "ca.crt"),
            "POLY_TLS_CERT_FILE": str(volume / "tls.crt"),
            "POLY_TLS_KEY_FILE": str(volume / "tls.key"),
        },
    ).tls
    before = tls.files_stamp(settings)  # what the server's reload compares before each handshake
    tls.ensure_certificates(issued, ["orders"], force=True)
    _kubelet_writes(volume, issued, "2026_12_05_renewed")
    assert tls.files_stamp(settings) != before
    assert (volume / "tls.crt").read_bytes() == (issued / "orders.crt").read_bytes()
    tls.server_credentials(settings)  # the renewed files load
