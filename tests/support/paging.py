"""Reading every page of a List while another thread keeps inserting into it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_INSERTS", "all_pages", "at_least", "names", "while_inserting"]

MAX_INSERTS = 40
"""The writer stops after this many: in ascending order a writer faster than the reader
would otherwise keep the last page moving forever."""

ListPage = Callable[[str], tuple[list[str], str]]
"""``page_token -> (names on the page, next_page_token)``."""


def names(items: Any) -> list[str]:
    return [item.name for item in items]


def all_pages(list_page: ListPage) -> tuple[list[str], int]:
    """The names served by every page, in order, and the number of pages."""
    found: list[str] = []
    token, pages = "", 0
    while True:
        page, token = list_page(token)
        found += page
        pages += 1
        if not token:
            return found, pages


def at_least(count: int, found: list[str]) -> list[str] | None:
    return found if len(found) >= count else None


def while_inserting(
    insert: Callable[[], object], list_page: ListPage, *, limit: int = MAX_INSERTS
) -> tuple[list[str], int, int]:
    """Every page of a listing, read while `insert` runs in a loop on another thread (until
    it answers False or `limit` inserts); the names served, the number of pages and the
    inserts made meanwhile."""
    stop, inserted = threading.Event(), [0]

    def writer() -> None:
        while not stop.is_set() and inserted[0] < limit and insert() is not False:
            inserted[0] += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        found, pages = all_pages(list_page)
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive()
    return found, pages, inserted[0]
