"""URLs that may carry a credential: an https URL, or plain http to this host only (a local
stand-in in development or tests). Settings naming a provider's API or a public callback are
checked with it."""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["LOOPBACK_HOSTS", "is_https_or_loopback"]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def is_https_or_loopback(url: str) -> bool:
    """Whether `url` is https with a host, or http to `LOOPBACK_HOSTS`."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return bool(parts.hostname)
    return parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS
