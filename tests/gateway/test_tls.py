"""gateway.tls: HTTPS at the edge, HTTP/2 by ALPN, and a certificate that rotates without a
restart, over real sockets (Python's TLS client, `h2`, curl)."""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.tls import CertificateFiles, ReloadingContext
from gateway.wire import Request, Response
from services.kit.tls import CertificateAuthority, new_authority
from tests.support.h2client import h2_call
from tests.support.http_server import curl, serve


async def _echo(request: Request) -> Response:
    document = {"version": list(request.version), "scheme": request.scheme, "path": request.raw_path}
    return Response(200, json.dumps(document).encode())


def _write_certificate(
    authority: CertificateAuthority, directory: Path, name: str = "edge"
) -> CertificateFiles:
    certificate, key = authority.issue(name, dns=["localhost"])
    files = CertificateFiles(directory / "edge.crt", directory / "edge.key")
    files.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    files.cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return files


def _client_context(authority: CertificateAuthority, alpn: list[str]) -> ssl.SSLContext:
    context = ssl.create_default_context(
        cadata=authority.certificate.public_bytes(serialization.Encoding.PEM).decode()
    )
    context.set_alpn_protocols(alpn)
    return context


def test_tls_negotiates_h2_by_alpn_and_still_serves_http11(tmp_path: Path) -> None:
    authority = new_authority()
    tls = ReloadingContext(_write_certificate(authority, tmp_path)).context

    def call(port: int) -> tuple[Any, bytes]:
        over_h2 = h2_call(port, "GET", "/secure", tls=_client_context(authority, ["h2", "http/1.1"]))
        plain = _client_context(authority, ["http/1.1"])
        with plain.wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost"
        ) as sock:
            sock.sendall(b"GET /one HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        return over_h2, received

    over_h2, over_h1 = serve(_echo, call, tls=tls)
    assert over_h2.status == 200 and json.loads(over_h2.body)["scheme"] == "https"
    assert json.loads(over_h2.body)["version"] == [2, 0]
    assert over_h1.startswith(b"HTTP/1.1 200 ") and b'"version": [1, 1]' in over_h1


def test_curl_speaks_http2_over_tls(tmp_path: Path) -> None:
    authority = new_authority()
    tls = ReloadingContext(_write_certificate(authority, tmp_path)).context
    ca = tmp_path / "ca.crt"
    ca.write_bytes(authority.certificate.public_bytes(serialization.Encoding.PEM))
    answer = serve(
        _echo,
        lambda port: curl("--http2", "--cacert", str(ca), "-i", f"https://localhost:{port}/tls").stdout,
        tls=tls,
    )
    assert answer.startswith("HTTP/2 200") and '"scheme": "https"' in answer


def test_h2c_upgrade_is_not_offered_over_tls(tmp_path: Path) -> None:
    authority = new_authority()
    tls = ReloadingContext(_write_certificate(authority, tmp_path)).context

    def call(port: int) -> bytes:
        context = _client_context(authority, ["http/1.1"])
        with context.wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost"
        ) as sock:
            sock.sendall(
                b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
            )
            return sock.recv(65536)

    assert serve(_echo, call, tls=tls).startswith(b"HTTP/1.1 200 ")


def _serial(port: int, authority: CertificateAuthority) -> int:
    context = _client_context(authority, ["http/1.1"])
    with context.wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost"
    ) as sock:
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_a_rotated_certificate_is_served_from_the_next_handshake(tmp_path: Path) -> None:
    authority = new_authority()
    files = _write_certificate(authority, tmp_path)
    reloading = ReloadingContext(files)

    def call(port: int) -> tuple[int, int, int, int]:
        first = _serial(port, authority)
        # Half a rotation: a new key beside the old certificate. The old pair serves on.
        new_certificate, new_key = authority.issue("edge", dns=["localhost"])
        files.key_file.write_bytes(
            new_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        during = _serial(port, authority)
        files.cert_file.write_bytes(new_certificate.public_bytes(serialization.Encoding.PEM))
        after = _serial(port, authority)
        return first, during, after, new_certificate.serial_number

    first, during, after, rotated = serve(_echo, call, tls=reloading.context)
    assert during == first, "a key without its certificate keeps the previous pair"
    assert after == rotated != first


def test_tls12_offers_only_the_aead_suites_http2_allows(tmp_path: Path) -> None:
    """RFC 9113 Appendix A blocks TLS 1.2's CBC suites; Python's default list has them."""
    context = ReloadingContext(_write_certificate(new_authority(), tmp_path)).context
    tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all("GCM" in name or "CHACHA20" in name for name in tls12), tls12
    assert all(name.startswith("ECDHE-") for name in tls12), "forward secret"
