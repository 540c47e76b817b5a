"""What a long-running process does with the objects it made while starting.

Start-up leaves a large heap that lives as long as the process: modules, protobuf
descriptors, SQLAlchemy metadata, compiled routes. CPython's collector re-walks all of it on
every full collection, and a served call that keeps objects alive a little while (a span
waiting for its batch export, an event in the outbox relay) promotes enough of them to set off
full collections regularly. Measured on GetOrder through the edge (bench/telemetry.py with a
collector probe): a full collection of the orders service took about 0.3 s, and tracing's
queued spans made them come about half again as often. `freeze_startup_heap` moves what
start-up made into the permanent generation, which collections skip; what calls allocate
afterwards is collected as before.
"""

from __future__ import annotations

import gc
import logging
import time

__all__ = ["freeze_startup_heap"]

_log = logging.getLogger("poly.server")


def freeze_startup_heap() -> None:
    """Collect the garbage start-up left, then freeze the rest (call once, when serving)."""
    started = time.perf_counter()
    gc.collect()  # what is garbage now would otherwise be frozen with the rest, never freed
    gc.freeze()
    _log.debug(
        "start-up heap frozen",
        extra={
            "objects": gc.get_freeze_count(),
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        },
    )
