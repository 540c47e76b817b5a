"""What the benchmarks read from this machine: CPU time of processes and cores from /proc,
thread pinning, listening ports, free ports, and the order statistics every table uses.

Shared by the benchmarks so that every one of them measures CPU the same way.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

__all__ = [
    "CLK_TCK",
    "BenchError",
    "all_threads_pinned",
    "children_cpu_s",
    "core_busy_s",
    "free_port",
    "listening_ports",
    "median",
    "percentile",
    "pin_all_threads",
    "proc_cpu_s",
    "run_to_the_end",
]

_O = TypeVar("_O")

CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """Something could not be started, checked or measured; the message says what."""


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a whole process (all threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def seconds_until_idle(
    pids: Callable[[], Iterable[int]],
    *,
    interval_s: float,
    limit_s: float = 120.0,
    settled: Callable[[], bool] = lambda: True,
) -> float:
    """Seconds until the processes `pids` names spend under a tenth of a core together over
    `interval_s` while `settled()` holds, bounded by `limit_s`: what one window left running
    (a saga backlog, an outbox) must not share the CPU with the next one."""
    began = time.monotonic()
    while time.monotonic() - began < limit_s:
        watched = list(pids())
        before, at = sum(proc_cpu_s(pid) for pid in watched), time.monotonic()
        time.sleep(interval_s)
        busy = (sum(proc_cpu_s(pid) for pid in watched) - before) / (time.monotonic() - at)
        if busy < 0.10 and settled():
            break
    return time.monotonic() - began


def core_busy_s(cpu: int) -> float:
    """user + nice + system time of one CPU (every process that ran there), in seconds."""
    for line in Path("/proc/stat").read_text().splitlines():
        label, *values = line.split()
        if label == f"cpu{cpu}":
            return sum(int(v) for v in values[:3]) / CLK_TCK
    return 0.0


def children_cpu_s() -> float:
    """CPU time of this process's finished children (load tools run as children)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pin_all_threads(pid: int, cpu: int) -> bool:
    """Pin every thread of `pid` to `cpu` (threads started later inherit it); True if all are."""
    pinned = True
    with contextlib.suppress(FileNotFoundError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(ProcessLookupError, FileNotFoundError, PermissionError):
                os.sched_setaffinity(int(tid), {cpu})
                pinned &= os.sched_getaffinity(int(tid)) == {cpu}
    return pinned


def all_threads_pinned(pid: int, cpu: int) -> bool:
    pinned = True
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            pinned &= os.sched_getaffinity(int(tid)) == {cpu}
    return pinned


def listening_ports(pid: int) -> set[int]:
    """TCP ports `pid` listens on (its socket inodes matched against /proc/net/tcp*)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


_LISTEN_PORTS = range(20_000, 32_000)
"""Below Linux's ephemeral range (32768-60999), so no outgoing connection of the system under
test can be holding a port when its server binds it (a kernel-chosen port could be)."""
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, outside the ephemeral range, and not handed out before
    in this run (a bench starts dozens of servers before any of them binds)."""
    for _ in range(1000):
        candidate = random.choice(_LISTEN_PORTS)
        if candidate in _HANDED_OUT:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
        _HANDED_OUT.add(candidate)
        return candidate
    raise BenchError("no free port between 20000 and 32000")


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank `q` percentile of already sorted values (nan when there are none)."""
    if not ordered:
        return math.nan
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))])


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def run_to_the_end(run: Callable[[_O], int], opts: _O) -> int:
    """`run(opts)` as a bench's exit code: Ctrl-C and ``kill`` (SIGTERM) unwind through the
    cleanup the run holds (its servers are stopped) and exit 130; a `BenchError` or a
    subprocess that timed out is one line on stderr and exit 1."""

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        return run(opts)
    except KeyboardInterrupt:
        print("\ninterrupted; the servers were stopped", file=sys.stderr)
        return 130
    except (BenchError, subprocess.TimeoutExpired) as error:
        print(f"bench failed: {error}", file=sys.stderr)
        return 1
