"""The edge as an HTTP client sees it, for system tests: is it answering, and an order placed
through it as the README places one."""

from __future__ import annotations

import json
import urllib.request

__all__ = ["edge_answers", "place_order"]


def edge_answers(url: str) -> bool:
    """Whether the edge at `url` (``http://127.0.0.1:PORT``) serves its key set yet."""
    try:
        with urllib.request.urlopen(f"{url}/.well-known/jwks.json", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def place_order(url: str, token: str, request_id: str) -> str:
    """An order placed over HTTP/JSON with our X-Request-Id (echoed back); its name."""
    line = {"sku": "BOOK-1", "quantity": 2, "unitPrice": {"currencyCode": "EUR", "amountMinor": "1250"}}
    placed = urllib.request.Request(
        f"{url}/v1/orders",
        data=json.dumps({"lines": [line]}).encode(),
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "X-Request-Id": request_id,
        },
        method="POST",
    )
    with urllib.request.urlopen(placed, timeout=10) as answer:
        assert answer.headers["X-Request-Id"] == request_id
        return str(json.loads(answer.read())["name"])
