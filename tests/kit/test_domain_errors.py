"""kit.domain_errors: what domain code raises, with no transport in sight."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.kit import domain_errors


@pytest.mark.parametrize("reason", ["lower_case", "X" * 64, "Mixed_Case"], ids=["lower", "too-long", "mixed"])
def test_reasons_must_be_upper_snake_and_short(reason: str) -> None:
    with pytest.raises(ValueError, match="UPPER_SNAKE"):
        domain_errors.NotFound(reason, "x")


def test_the_message_is_formatted_from_the_metadata_and_every_value_kept_as_text() -> None:
    error = domain_errors.FailedPrecondition(
        "ORDER_NOT_CANCELLABLE", "order {order} is {state}", order="orders/7", state=3
    )
    assert error.message == "order orders/7 is 3" and str(error) == error.message
    assert error.metadata == {"order": "orders/7", "state": "3"}
    assert error.kind is domain_errors.ErrorKind.FAILED_PRECONDITION


def test_the_domain_errors_module_needs_no_grpc() -> None:
    probe = "import sys, services.kit.domain_errors; sys.exit('grpc' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], check=False, timeout=60).returncode == 0
