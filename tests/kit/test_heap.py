"""The start-up heap: garbage collected first, the rest frozen out of later collections."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from services.kit.heap import freeze_startup_heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual


def test_garbage_left_by_start_up_is_freed_not_frozen(unfrozen: None) -> None:
    garbage = _Node()
    gone = weakref.ref(garbage)
    del garbage
    kept = _Node()
    freeze_startup_heap()
    assert gone() is None, "cyclic garbage from start-up is collected before the freeze"
    assert gc.get_freeze_count() > 0
    # gc.get_objects() lists the generations collections walk; the frozen ones are not there.
    assert all(tracked is not kept for tracked in gc.get_objects()), "live start-up objects are frozen"


def test_what_calls_allocate_afterwards_is_still_collected(unfrozen: None) -> None:
    freeze_startup_heap()
    later = _Node()
    gone = weakref.ref(later)
    del later
    gc.collect()
    assert gone() is None
