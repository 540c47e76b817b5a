"""One entity-tag format for every resource (AIP-154): ``W/"<version>"``.

A resource's etag is its version (a counter its store bumps on each write) written as a weak
HTTP entity tag, so the edge can hand it to HTTP clients as it is. Clients treat it as
opaque: they send back what they read. An etag in any other form names no version and so
never matches: the write is refused as stale (ABORTED), never as a server error.
"""

from __future__ import annotations

import re

__all__ = ["etag", "matches", "version_of"]

_ETAG = re.compile(r'W/"([0-9]{1,18})"', re.ASCII)


def etag(version: int) -> str:
    return f'W/"{version}"'


def version_of(given: str) -> int | None:
    """The version `given` names: None when there is no etag (the caller asked for no check),
    -1 (which no resource has) when it is not one of ours."""
    if not given:
        return None
    match = _ETAG.fullmatch(given)
    return int(match.group(1)) if match else -1


def matches(given: str, version: int) -> bool:
    """Whether a write conditioned on `given` may change a resource at `version` (no etag: yes)."""
    expected = version_of(given)
    return expected is None or expected == version
