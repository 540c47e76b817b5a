"""The export rules every kit and gateway module follows (STYLE.md: `__all__`, a test file)."""

from __future__ import annotations

import importlib.util
import inspect
from types import ModuleType

__all__ = ["assert_exports_are_complete", "assert_test_file_exists"]


def assert_exports_are_complete(module: ModuleType) -> None:
    """`module` has `__all__`, naming each of its public functions and classes once."""
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{module.__name__} has no __all__"
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


def assert_test_file_exists(expected: str) -> None:
    assert importlib.util.find_spec(expected) is not None, expected
