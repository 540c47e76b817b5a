"""Every payments module declares its public names, and each part of the domain has its tests."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import pytest

import services.payments
from tests.support.exports import assert_exports_are_complete, assert_test_file_exists

DOMAIN = ["domain", "idempotency", "ledger", "records"]
"""The modules that know neither gRPC nor SQL (pyproject's import-linter contract checks
`domain`, and so every module it imports)."""


def _modules() -> list[ModuleType]:
    return [
        importlib.import_module(f"services.payments.{m.name}")
        for m in pkgutil.iter_modules(services.payments.__path__)
        if m.name != "__main__"
    ]


@pytest.mark.parametrize("module", _modules(), ids=lambda m: m.__name__)
def test_all_matches_the_public_names(module: ModuleType) -> None:
    assert_exports_are_complete(module)


@pytest.mark.parametrize("name", DOMAIN)
def test_each_part_of_the_domain_has_its_test_file(name: str) -> None:
    assert_test_file_exists(f"tests.payments.test_{name}")


def test_the_domain_imports_every_part_of_it() -> None:
    """So the import-linter contract on `services.payments.domain` covers them all."""
    domain = importlib.import_module("services.payments.domain")
    imported = {value.__module__ for value in vars(domain).values() if hasattr(value, "__module__")}
    assert {f"services.payments.{name}" for name in DOMAIN} <= imported | {domain.__name__}
