"""mTLS against a real service process: who is refused at the handshake, and hot reload."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.kit import config, tls
from tests.support.env import poly_environ, settings_for
from tests.support.processes import Process, health_check

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def users_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[config.Settings, int, Process]]:
    home = tmp_path_factory.mktemp("home")
    tls.ensure_certificates(home / "certs", config.COMPONENTS)
    environ = poly_environ(home)
    process = Process.module("services.users", environ)
    cli = settings_for("cli", environ)
    try:
        assert health_check(cli, cli.peers["users"]) == "SERVING"
        yield cli, int(environ["POLY_USERS_PORT"]), process
    finally:
        process.stop()


def _check(
    port: int, credentials: grpc.ChannelCredentials, name_override: str | None = None
) -> grpc.RpcError:
    options = [("grpc.ssl_target_name_override", name_override)] if name_override else []
    with (
        grpc.secure_channel(f"localhost:{port}", credentials, options=options) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    return caught.value


def _pem(value: object) -> bytes:
    if isinstance(value, x509.Certificate):
        return value.public_bytes(serialization.Encoding.PEM)
    return value.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_a_client_of_our_ca_is_served(users_service: tuple[config.Settings, int, Process]) -> None:
    cli, _, _ = users_service
    assert health_check(cli, cli.peers["users"], timeout=5) == "SERVING"


def test_a_client_without_a_certificate_is_refused(
    users_service: tuple[config.Settings, int, Process],
) -> None:
    cli, port, _ = users_service
    error = _check(port, grpc.ssl_channel_credentials(root_certificates=cli.tls.ca_file.read_bytes()))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_certificate_from_another_ca_is_refused(
    users_service: tuple[config.Settings, int, Process],
) -> None:
    cli, port, _ = users_service
    impostor_ca = tls.new_authority("Somebody else's CA")
    certificate, key = impostor_ca.issue("cli")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=cli.tls.ca_file.read_bytes(),
        private_key=_pem(key),
        certificate_chain=_pem(certificate),
    )
    assert _check(port, credentials).code() == grpc.StatusCode.UNAVAILABLE


def test_a_server_whose_certificate_does_not_match_the_dialled_name_is_refused(
    users_service: tuple[config.Settings, int, Process],
) -> None:
    cli, port, _ = users_service
    # The users certificate names localhost, users and users.default.svc.cluster.local only.
    error = _check(port, tls.channel_credentials(cli.tls), name_override="payments")
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_a_server_signed_by_another_ca_is_refused(
    users_service: tuple[config.Settings, int, Process],
) -> None:
    cli, port, _ = users_service
    other_ca = tls.new_authority("Untrusted root")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_pem(other_ca.certificate),
        private_key=cli.tls.key_file.read_bytes(),
        certificate_chain=cli.tls.cert_file.read_bytes(),
    )
    assert _check(port, credentials).code() == grpc.StatusCode.UNAVAILABLE


def _served_certificate(cli: config.Settings, port: int) -> x509.Certificate:
    context = ssl.create_default_context(cafile=str(cli.tls.ca_file))
    context.load_cert_chain(str(cli.tls.cert_file), str(cli.tls.key_file))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as wrapped,
    ):
        der = wrapped.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_a_rotated_server_certificate_is_served_without_a_restart(
    users_service: tuple[config.Settings, int, Process],
) -> None:
    cli, port, process = users_service
    before = _served_certificate(cli, port)
    issued = tls.ensure_certificates(Path(cli.tls.ca_file.parent), ["users"], force=True)
    assert issued.written == [cli.tls.ca_file.parent / "users.crt"]
    after = _served_certificate(cli, port)
    assert after.serial_number != before.serial_number
    assert after == x509.load_pem_x509_certificate((cli.tls.ca_file.parent / "users.crt").read_bytes())
    assert process.popen.poll() is None, "the service kept running"
    assert health_check(cli, cli.peers["users"], timeout=5) == "SERVING"


def _first_bytes_after_handshake(port: int, context: ssl.SSLContext) -> bytes | ssl.SSLError:
    """What the server sends after the TLS handshake: its HTTP/2 SETTINGS, or a refusal."""
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as wrapped:
                wrapped.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                return wrapped.recv(64)  # TLS 1.3 reports a refused client certificate here
        except ssl.SSLError as error:
            return error


@pytest.mark.parametrize("present_certificate", ["ours", "none", "other-ca"])
def test_the_refusal_happens_in_the_tls_handshake(
    users_service: tuple[config.Settings, int, Process], tmp_path: Path, present_certificate: str
) -> None:
    cli, port, _ = users_service
    context = ssl.create_default_context(cafile=str(cli.tls.ca_file))
    if present_certificate == "ours":
        context.load_cert_chain(str(cli.tls.cert_file), str(cli.tls.key_file))
    elif present_certificate == "other-ca":
        certificate, key = tls.new_authority("Somebody else's CA").issue("cli")
        (tmp_path / "c.crt").write_bytes(_pem(certificate))
        (tmp_path / "c.key").write_bytes(_pem(key))
        context.load_cert_chain(str(tmp_path / "c.crt"), str(tmp_path / "c.key"))
    answer = _first_bytes_after_handshake(port, context)
    if present_certificate == "ours":
        assert isinstance(answer, bytes) and answer[3:4] == b"\x04", "an HTTP/2 SETTINGS frame"
    else:
        assert isinstance(answer, ssl.SSLError) or answer == b"", f"no HTTP/2 byte may follow: {answer!r}"
