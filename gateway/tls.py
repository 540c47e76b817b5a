"""TLS termination at the edge: HTTPS for its clients, HTTP/2 by ALPN, certificates that
rotate without a restart.

The services reload their certificates when the files change (`services.kit.tls`); the edge
does the same for the certificate it shows browsers. Before each handshake it compares the
files' modification times and sizes with those it loaded (a ``stat`` per connection, a read
only on change) and, when they changed, hands the handshake a context built from the new
files. Connections already open keep the certificate they began with. A rotation caught
half-written (a key that does not match its certificate yet) keeps the previous
certificate until the next handshake finds the pair whole.

TLS 1.2 is the least offered (RFC 9113 §9.2 requires it of HTTP/2), and in TLS 1.2 only
ECDHE with AES-GCM or ChaCha20-Poly1305: Python's default list also has CBC suites, which are
on HTTP/2's blocklist (RFC 9113 Appendix A). TLS 1.3's suites are all AEAD.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CertificateFiles", "ReloadingContext"]

_log = logging.getLogger("poly.gateway")


@dataclass(frozen=True)
class CertificateFiles:
    """The edge's serving certificate (PEM, chain after the leaf) and its private key."""

    cert_file: Path
    key_file: Path


_Stamp = tuple[tuple[int, int], ...]
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class ReloadingContext:
    """An `ssl.SSLContext` (`context`) for `files` that picks up new files at the next handshake.

    Raises `OSError` or `ssl.SSLError` when the files cannot be loaded at all (the edge does
    not start); later failures keep the certificate already loaded. `http2` offers ``h2``
    before ``http/1.1`` by ALPN.
    """

    def __init__(self, files: CertificateFiles, *, http2: bool = True) -> None:
        self._files = files
        self._protocols = ["h2", "http/1.1"] if http2 else ["http/1.1"]
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._failed: _Stamp | None = None
        self.context = self._load()
        """The context to listen with: its handshakes are moved to the newest certificate."""
        self.context.sni_callback = self._on_hello
        self._current = self.context

    def _stat(self) -> _Stamp:
        files = (self._files.cert_file, self._files.key_file)
        return tuple((s.st_mtime_ns, s.st_size) for s in (f.stat() for f in files))

    def _load(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(_TLS12_CIPHERS)
        context.load_cert_chain(self._files.cert_file, self._files.key_file)
        context.set_alpn_protocols(self._protocols)
        return context

    def current(self) -> ssl.SSLContext:
        """The context of the newest certificate that loaded (reloading it if the files changed)."""
        with self._lock:
            try:
                stamp = self._stat()
            except OSError:
                return self._current  # a file gone for a moment, mid-rotation
            if stamp in (self._stamp, self._failed):
                return self._current
            try:
                self._current = self._load()
            except (OSError, ssl.SSLError) as error:
                # Mid-rotation (a key not matching its certificate yet): the certificate already
                # loaded serves on, and the files are tried again once they change again.
                self._failed = stamp
                _log.warning("serving certificate not reloaded", extra={"error": str(error)})
                return self._current
            self._stamp = stamp
            _log.info("serving certificate reloaded", extra={"cert_file": str(self._files.cert_file)})
            return self._current

    def _on_hello(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: object
    ) -> None:
        # Called for every ClientHello, with or without SNI (server_name None).
        newest = self.current()
        if newest is not connection.context:
            connection.context = newest
