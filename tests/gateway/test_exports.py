"""Every gateway module declares its public names, and declares all of them."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import pytest

import gateway
from tests.support.exports import assert_exports_are_complete, assert_test_file_exists


def _modules() -> list[ModuleType]:
    return [
        importlib.import_module(f"gateway.{m.name}")
        for m in pkgutil.iter_modules(gateway.__path__)
        if m.name != "__main__"
    ]


@pytest.mark.parametrize("module", _modules(), ids=lambda m: m.__name__)
def test_all_matches_the_public_names(module: ModuleType) -> None:
    assert_exports_are_complete(module)


@pytest.mark.parametrize("module", _modules(), ids=lambda m: m.__name__)
def test_each_module_has_its_test_file(module: ModuleType) -> None:
    assert_test_file_exists(f"tests.gateway.test_{module.__name__.rsplit('.', 1)[1]}")
