"""Development CA, per-component certificates with SPIFFE identities, and credentials.

Every certificate carries exactly one URI SAN, ``spiffe://<trust-domain>/ns/<ns>/sa/<name>``,
which is the caller identity that authorization checks, plus DNS SANs for the names the
component is dialled by. Servers require a client certificate signed by the same CA and
pick up rotated certificate files on the next handshake, without a restart.

`cryptography` is imported only by what makes or reads certificates (`ensure_certificates`,
`new_authority`, `load_authority`): credentials come from the PEM files alone, so a client
such as `poly status` never loads it.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from services.kit.config import TlsSettings

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "CLIENT_ONLY",
    "CertificateAuthority",
    "CertificateError",
    "FilesStamp",
    "IssuedFiles",
    "channel_credentials",
    "dns_names",
    "files_stamp",
    "ensure_certificates",
    "load_authority",
    "new_authority",
    "peer_identity",
    "server_credentials",
    "spiffe_id",
]

CLIENT_ONLY: frozenset[str] = frozenset({"cli"})
"""Identities that only ever call: their certificates cannot serve (no serverAuth usage)."""

_CA_DAYS = 3650


class CertificateError(ValueError):
    """The certificate directory is in a state this module refuses to repair by guessing."""


_LEAF_DAYS = 365
_CLOCK_SKEW = dt.timedelta(minutes=5)


def spiffe_id(name: str, *, trust_domain: str = "poly.local", namespace: str = "default") -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{name}"


def dns_names(name: str, *, namespace: str = "default") -> list[str]:
    return ["localhost", name, f"{name}.{namespace}.svc.cluster.local"]


@dataclass(frozen=True)
class CertificateAuthority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def issue(
        self,
        name: str,
        *,
        trust_domain: str = "poly.local",
        namespace: str = "default",
        dns: list[str] | None = None,
        days: int = _LEAF_DAYS,
        server: bool = True,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A leaf certificate for `name`: client authentication, and server too unless `server=False`."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        sans: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(spiffe_id(name, trust_domain=trust_domain, namespace=namespace))
        ]
        sans += [x509.DNSName(d) for d in (dns if dns is not None else dns_names(name, namespace=namespace))]
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=False,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                    if server
                    else [ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        return certificate, key


def new_authority(common_name: str = "Polyservice development CA") -> CertificateAuthority:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(certificate, key)


def load_authority(directory: Path) -> CertificateAuthority:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    certificate = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{directory / 'ca.key'}: expected an EC private key")
    return CertificateAuthority(certificate, key)


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only, atomically (rotation never tears it)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class IssuedFiles:
    written: list[Path]
    kept: list[Path]


def ensure_certificates(
    directory: Path,
    names: tuple[str, ...] | list[str],
    *,
    force: bool = False,
    trust_domain: str = "poly.local",
    namespace: str = "default",
) -> IssuedFiles:
    """Create the CA (if absent) and a certificate per name; existing files are kept unless `force`.

    `force` re-issues the leaf certificates from the existing CA (a rotation); it never
    replaces the CA, since every peer trusts it.
    """
    from cryptography.hazmat.primitives import serialization

    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    written: list[Path] = []
    kept: list[Path] = []
    ca_files = [(directory / "ca.crt").exists(), (directory / "ca.key").exists()]
    if all(ca_files):
        authority = load_authority(directory)
        kept.append(directory / "ca.crt")
    elif any(ca_files):
        # A new CA would silently invalidate every certificate issued so far.
        raise CertificateError(
            f"{directory} has only one of ca.crt and ca.key; restore the other, "
            "or remove the whole directory to start a new CA"
        )
    else:
        authority = new_authority()
        _write_private(directory / "ca.key", _key_pem(authority.key))
        _write_public(directory / "ca.crt", authority.certificate.public_bytes(serialization.Encoding.PEM))
        written.append(directory / "ca.crt")
    for name in names:
        crt, key_path = directory / f"{name}.crt", directory / f"{name}.key"
        if crt.exists() and key_path.exists() and not force:
            kept.append(crt)
            continue
        certificate, key = authority.issue(
            name, trust_domain=trust_domain, namespace=namespace, server=name not in CLIENT_ONLY
        )
        _write_private(key_path, _key_pem(key))
        _write_public(crt, certificate.public_bytes(serialization.Encoding.PEM))
        written.append(crt)
    return IssuedFiles(written, kept)


FilesStamp = tuple[tuple[int, int], ...]


def files_stamp(settings: TlsSettings) -> FilesStamp:
    """Modification time and size of the CA, certificate and key: changes when they rotate."""
    files = (settings.ca_file, settings.cert_file, settings.key_file)
    return tuple((s.st_mtime_ns, s.st_size) for s in (f.stat() for f in files))


class _ReloadingFetcher:
    """Hands gRPC a new certificate configuration whenever the files on disk change."""

    def __init__(self, settings: TlsSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._stamp = files_stamp(settings)

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        s = self._settings
        return grpc.ssl_server_certificate_configuration(
            [(s.key_file.read_bytes(), s.cert_file.read_bytes())], root_certificates=s.ca_file.read_bytes()
        )

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC before every new handshake: a stat per connection, a read on change.
        with self._lock:
            try:
                stamp = files_stamp(self._settings)
                if stamp == self._stamp:
                    return None
                configuration = self.configuration()
            except (OSError, ValueError):
                return None  # a half-written rotation: keep serving the current certificate
            self._stamp = stamp
            return configuration


def server_credentials(settings: TlsSettings) -> grpc.ServerCredentials:
    """mTLS server credentials: a client certificate from our CA is required; files hot-reload."""
    fetcher = _ReloadingFetcher(settings)
    return grpc.dynamic_ssl_server_credentials(
        fetcher.configuration(), fetcher, require_client_authentication=True
    )


def channel_credentials(settings: TlsSettings) -> grpc.ChannelCredentials:
    """mTLS client credentials presenting this component's certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=settings.ca_file.read_bytes(),
        private_key=settings.key_file.read_bytes(),
        certificate_chain=settings.cert_file.read_bytes(),
    )


def peer_identity(context: grpc.ServicerContext) -> str | None:
    """The caller's SPIFFE ID from its verified client certificate, or None."""
    auth = context.auth_context()
    for value in auth.get("peer_spiffe_id", []):
        return str(value.decode())
    uris = [v.decode() for v in auth.get("x509_subject_alternative_name", []) if v.startswith(b"spiffe://")]
    return uris[0] if len(uris) == 1 else None
