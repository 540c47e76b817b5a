"""Every gateway module declares its public names, and declares all of them."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import gateway


def _modules() -> list[ModuleType]:
    return [
        importlib.import_module(f"gateway.{m.name}")
        for m in pkgutil.iter_modules(gateway.__path__)
        if m.name != "__main__"
    ]


@pytest.mark.parametrize("module", _modules(), ids=lambda m: m.__name__)
def test_all_matches_the_public_names(module: ModuleType) -> None:
    exported = getattr(module, "__all__", None)
    assert exported is not None, "every gateway module has __all__"
    assert len(set(exported)) == len(exported)
    for name in exported:
        assert hasattr(module, name), f"__all__ names {name}, which does not exist"
    defined_here = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and value.__module__ == module.__name__
    }
    assert defined_here <= set(exported), f"public but not exported: {defined_here - set(exported)}"


@pytest.mark.parametrize("module", _modules(), ids=lambda m: m.__name__)
def test_each_module_has_its_test_file(module: ModuleType) -> None:
    expected = f"tests.gateway.test_{module.__name__.rsplit('.', 1)[1]}"
    assert importlib.util.find_spec(expected) is not None, expected
