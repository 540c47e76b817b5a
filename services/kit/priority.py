"""How much of a shared CPU a service claims when it has to compete for one.

Part of every order's work happens after its caller has its answer: payments' capture and
notifications' email and webhooks, which no caller waits on. Under ``poly up`` all five
services share the same cores. When those are full, the scheduler shares them evenly among
whatever is runnable, so a read in orders waits its turn behind an email being rendered. So
a service whose work is background can run at a lower CPU priority, a Unix nice value
(``POLY_<SERVICE>_NICE``; payments and notifications run at 15 by default, see
`config.DEFAULT_NICE`). It still has all of the CPU the others leave idle; under contention
its threads weigh less (1,024 at nice 0, 110 at 10, 36 at 15, 15 at 19). Its work waits; the
outbox keeps it, and a push that times out costs no delivery attempt, so nothing is
dead-lettered for waiting.

Measured with ``bench/vs_fastapi.py --mixed-only`` (every service on one core, reads at 32
in flight while orders are placed at 4 as fast as they go), payments and notifications at:

- nice 0: took 35% of the core, and the reads' p99 was 4.1 times its unloaded value;
- nice 10: 20%, 1.8 to 2.05 times (the target is 2);
- nice 15: 9%, 1.4 to 1.6 times, and the sagas caught up 18 s after the writers stopped
  (12 s at nice 10, 21 s at 19, which bought little more: 1.4 times).

Linux ranks threads, not processes, and by default groups each session's processes
("autogroup") and shares the CPU evenly among the groups first; a nice value only ranks
threads within their group. So the value is set on every thread the process has (threads
started later inherit it) and, when the process leads its own session (as under ``poly up``,
which starts each service in one), on its session's group as well. A process started in a
terminal's session leaves that group alone: lowering it would lower the shell and everything
started from it. An unprivileged process may only raise its nice value, so a value at or below
the current one changes nothing; the value is never lowered. Where each service has a
cgroup of its own (a container, a systemd unit), the cgroups' weights rank the services (on
Kubernetes, their CPU requests) and the nice value ranks only a service's own threads.
"""

from __future__ import annotations

import contextvars
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

__all__ = ["INLINE", "BackgroundThreads", "lower_cpu_priority", "session_group_nice"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

_log = logging.getLogger("poly.server")

_THREADS = Path("/proc/self/task")
_SESSION_GROUP = Path("/proc/self/autogroup")
_GROUP_WRITE_ATTEMPTS = 20
_TRANSACTION_THREADS = 4


def lower_cpu_priority(nice: int) -> None:
    """Run this process at nice `nice` (0 to 19) if it runs at less: every thread, and its
    session's scheduling group when it leads its own session. Never lowered, even where it
    could be. Problems are logged, not raised: the process serves either way."""
    if nice <= 0:
        return
    try:
        _raise_every_thread(nice)
    except OSError as error:
        _log.warning("cpu priority not lowered", extra={"nice": nice, "error": str(error)})
        return
    try:
        group = _raise_session_group(nice)
    except OSError as error:  # a read-only /proc
        _log.warning("session's scheduling group not lowered", extra={"nice": nice, "error": str(error)})
        group = None
    _log.info(
        "cpu priority lowered",
        extra={"nice": os.getpriority(os.PRIO_PROCESS, 0), "session_group_nice": group},
    )


def _raise_every_thread(nice: int) -> None:
    if not _THREADS.is_dir():  # not Linux: the value is the whole process's
        _raise_to(0, nice)
        return
    done: set[int] = set()
    for _ in range(5):  # a thread not yet lowered may have started another meanwhile
        threads = {int(tid) for tid in os.listdir(_THREADS)} - done
        if not threads:
            return
        for tid in threads:
            _raise_to(tid, nice)
        done |= threads


def _raise_to(tid: int, nice: int) -> None:
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except ProcessLookupError:
        pass  # the thread ended meanwhile


def _raise_session_group(nice: int) -> int | None:
    """Lower the session's group too, if it is this process's alone; its nice value now, or
    None when it has none of its own (or the kernel no such groups)."""
    if os.getsid(0) != os.getpid():
        return None
    current = session_group_nice()
    if current is None:
        return None
    if current < nice:
        # Without CAP_SYS_ADMIN the kernel takes one such write per 100 ms on the whole
        # machine and refuses the others (EAGAIN): poly up starts the services together.
        for attempt in range(_GROUP_WRITE_ATTEMPTS):
            try:
                _SESSION_GROUP.write_text(str(nice))
                break
            except BlockingIOError:
                if attempt == _GROUP_WRITE_ATTEMPTS - 1:
                    raise
                time.sleep(random.uniform(0.1, 0.2))  # noqa: S311 - jitter, not a secret
    return session_group_nice()


def session_group_nice(pid: int | None = None) -> int | None:
    """The nice value of a process's session group ("/autogroup-42 nice 0"), or None where it
    has none: no such file, or an empty one (kernels and sandboxes without the groups)."""
    group = _SESSION_GROUP if pid is None else Path(f"/proc/{pid}/autogroup")
    try:
        fields = group.read_text().split() if group.is_file() else []
    except OSError:  # the process ended meanwhile
        return None
    return int(fields[-1]) if len(fields) == 3 and fields[-1].lstrip("-").isdigit() else None


class BackgroundThreads:
    """The threads of a service that no caller waits on (the outbox relay, a saga worker) run
    at `nice` while the calls run at the process's own priority; their transactions do not.

    A low-priority thread preempted inside a write transaction would hold SQLite's one write
    lock until the scheduler came back to it, and every caller's write would wait behind it
    (measured: CreateOrder's p99 rose four times). So `transaction` runs a call that holds
    locks on one of a few threads started here, at the process's priority, while the
    background thread waits; the caller's context (trace, request id) goes with it."""

    def __init__(self, nice: int) -> None:
        self.nice = nice
        self._own = _thread_nice()
        self._jobs: queue.SimpleQueue[tuple[Future[Any], contextvars.Context, Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._runners: list[threading.Thread] = []
        self._queueing = threading.Lock()  # a job is never queued behind the runners' stop
        if self.lowers():
            # Started now, by a thread at the process's priority: a thread inherits its
            # starter's nice value, so one started later by a background thread would not be.
            # Several, so that on PostgreSQL the workers' transactions still overlap.
            for index in range(_TRANSACTION_THREADS):
                name = f"background-transactions-{index}"
                runner = threading.Thread(target=self._run, name=name, daemon=True)
                runner.start()
                self._runners.append(runner)

    def lowers(self) -> bool:
        """Whether background threads run below the process (on Linux, which ranks threads);
        never at 0, even in a process started above normal priority (below 0)."""
        return self.nice > max(self._own, 0) and _THREADS.is_dir()

    def enter(self) -> None:
        """Called first by a background thread: it (and the threads it starts) runs at `nice`."""
        if self.lowers():
            _raise_to(threading.get_native_id(), self.nice)

    def transaction(self, call: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """`call(*args, **kwargs)`, which holds database locks while it runs, at the process's
        priority: from a lowered thread on a transaction thread, else right here."""
        if not self._runners or _thread_nice() <= self._own:
            return call(*args, **kwargs)
        done: Future[_T] = Future()
        with self._queueing:
            if not self._runners:  # closed meanwhile
                return call(*args, **kwargs)
            self._jobs.put((done, contextvars.copy_context(), lambda: call(*args, **kwargs)))
        return done.result()

    def close(self, timeout: float = 5.0) -> None:
        """Finish the transactions already queued, then stop (after the workers have stopped,
        before the database is closed)."""
        with self._queueing:
            runners, self._runners = self._runners, []
            for _ in runners:
                self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for runner in runners:
            runner.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            done, context, call = job
            try:
                done.set_result(context.run(call))
            except BaseException as error:  # noqa: BLE001 - raised again in the waiting thread
                done.set_exception(error)


def _thread_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id() if _THREADS.is_dir() else 0)


# Lowers nothing and runs every transaction where it is called: for a worker that no
# service has wired to its own (tests, tools).
INLINE = BackgroundThreads(0)
