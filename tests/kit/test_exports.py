"""Every kit module declares its public names, and declares all of them."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import pytest

import services.kit
from tests.support.exports import assert_exports_are_complete, assert_test_file_exists


def _modules() -> list[ModuleType]:
    return [
        importlib.import_module(f"services.kit.{m.name}") for m in pkgutil.iter_modules(services.kit.__path__)
    ]


@pytest.mark.parametrize("module", _modules(), ids=lambda m: m.__name__)
def test_all_matches_the_public_names(module: ModuleType) -> None:
    assert_exports_are_complete(module)


@pytest.mark.parametrize("module", _modules(), ids=lambda m: m.__name__)
def test_each_module_has_its_test_file(module: ModuleType) -> None:
    # services.kit.tls -> tests.kit.test_tls; services.kit.bus.relay -> tests.kit.bus.test_relay;
    # a package (services.kit.bus) -> its test package (tests.kit.bus).
    parts = module.__name__.split(".")[2:]
    if hasattr(module, "__path__"):
        expected = "tests.kit." + ".".join(parts)
    else:
        expected = "tests.kit." + ".".join([*parts[:-1], f"test_{parts[-1]}"])
    assert_test_file_exists(expected)
