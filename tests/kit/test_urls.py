"""URLs that may carry a credential (services/kit/urls.py)."""

from __future__ import annotations

import pytest

from services.kit.urls import is_https_or_loopback


@pytest.mark.parametrize(
    ("url", "fit"),
    [
        ("https://api.stripe.com", True),
        ("https://api.example.com/v1/channels/sms/events", True),
        ("http://127.0.0.1:8080", True),
        ("http://localhost:9", True),
        ("http://[::1]:9/x", True),
        ("http://api.stripe.com", False),
        ("http://127.0.0.1.example.com", False),
        ("https://", False),
        ("ftp://api.stripe.com", False),
        ("/v1/channels/sms/events", False),
        ("", False),
    ],
)
def test_https_anywhere_or_plain_http_to_this_host_only(url: str, fit: bool) -> None:
    assert is_https_or_loopback(url) is fit
