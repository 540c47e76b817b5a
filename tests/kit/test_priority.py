"""A background service's CPU priority: every thread, and its own session's group only.

A nice value cannot be lowered again without privilege, so each case runs in a child
process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from services.kit import config, priority

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux's /proc reports threads")

_CHILD = textwrap.dedent(
    """
    import json, os, sys, threading
    from services.kit.priority import lower_cpu_priority, session_group_nice

    start_nice = int(sys.argv[1])
    if start_nice > os.getpriority(os.PRIO_PROCESS, 0):
        os.setpriority(os.PRIO_PROCESS, 0, start_nice)
    parked = threading.Event()
    before = threading.Thread(target=parked.wait, daemon=True)  # one that exists before the change
    before.start()
    lower_cpu_priority(int(sys.argv[2]))
    seen = {}
    after = threading.Thread(target=lambda: seen.update(after=os.getpriority(os.PRIO_PROCESS, 0)))
    after.start()
    after.join()
    threads = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            threads[tid] = os.getpriority(os.PRIO_PROCESS, int(tid))
        except ProcessLookupError:
            pass  # `after`, still listed while it ends
    parked.set()
    print(json.dumps({
        "threads": threads,
        "started_after": seen["after"],
        "group": session_group_nice(),
    }))
    """
)


def _child(nice: int, *, start_nice: int = 0, own_session: bool) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(start_nice), str(nice)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
        start_new_session=own_session,
    )
    found: dict[str, Any] = json.loads(done.stdout)
    return found


_OURS = os.getpriority(os.PRIO_PROCESS, 0)  # the suite may itself run under `nice`


def test_every_thread_of_a_background_service_runs_at_its_nice_value() -> None:
    found = _child(10, own_session=True)
    assert len(found["threads"]) >= 2, "the thread started before the change is counted"
    assert set(found["threads"].values()) == {max(_OURS, 10)}
    assert found["started_after"] == max(_OURS, 10), "threads started later inherit it"


def test_a_service_leading_its_own_session_lowers_its_scheduling_group_too() -> None:
    # Linux shares the CPU evenly among sessions' groups first, so without this a nice value
    # would not rank the service against other services started in sessions of their own.
    found = _child(10, own_session=True)
    if found["group"] is None:
        pytest.skip("this kernel has no session groups (CONFIG_SCHED_AUTOGROUP)")
    assert found["group"] == 10


def test_a_service_started_in_a_terminals_session_leaves_that_sessions_group_alone() -> None:
    before = priority.session_group_nice()
    found = _child(10, own_session=False)
    assert set(found["threads"].values()) == {max(_OURS, 10)}
    assert found["group"] == before, "the shell and everything started from it keep their priority"
    assert priority.session_group_nice() == before


def test_a_process_already_running_at_a_lower_priority_keeps_it() -> None:
    found = _child(10, start_nice=15, own_session=True)
    assert set(found["threads"].values()) == {max(_OURS, 15)}


def test_nice_zero_changes_nothing() -> None:
    found = _child(0, own_session=True)
    assert set(found["threads"].values()) == {_OURS}
    if found["group"] is not None:
        assert found["group"] == 0, "a new session's group starts at 0 and stays there"


def test_payments_and_notifications_give_way_by_default_and_every_services_background_threads() -> None:
    settings = {name: config.load(name, {}).server for name in config.COMPONENTS}
    assert {name: s.nice for name, s in settings.items()} == {
        **dict.fromkeys(config.COMPONENTS, 0),
        "payments": 15,
        "notifications": 15,
    }
    assert {name: s.background_nice for name, s in settings.items()} == {
        **dict.fromkeys(config.SERVICES, 15),
        "gateway": 0,
        "cli": 0,
    }


def test_a_services_nice_value_is_its_own_setting_within_range() -> None:
    assert config.load("notifications", {"POLY_NOTIFICATIONS_NICE": "0"}).server.nice == 0
    assert config.load("orders", {"POLY_ORDERS_NICE": "5", "POLY_PAYMENTS_NICE": "0"}).server.nice == 5
    with pytest.raises(config.ConfigError, match="POLY_PAYMENTS_NICE"):
        config.load("payments", {"POLY_PAYMENTS_NICE": "20"})
    with pytest.raises(config.ConfigError, match="POLY_ORDERS_NICE"):
        config.load("orders", {"POLY_ORDERS_NICE": "-5"})


class _GroupFile:
    """Stands in for /proc/self/autogroup: its text, and writes refused `busy` times first
    with EAGAIN, as the kernel refuses an unprivileged second write within 100 ms."""

    def __init__(self, text: str, busy: int = 0) -> None:
        self.text = text
        self.busy = busy
        self.writes: list[str] = []

    def is_file(self) -> bool:
        return True

    def read_text(self) -> str:
        return self.text

    def write_text(self, value: str) -> None:
        if self.busy:
            self.busy -= 1
            raise BlockingIOError(11, "Resource temporarily unavailable")
        self.writes.append(value)
        self.text = f"/autogroup-42 nice {value}\n"


@pytest.fixture
def session_leader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(priority.os, "getsid", lambda pid: os.getpid())
    monkeypatch.setattr(priority.time, "sleep", lambda seconds: None)


def test_a_group_write_the_kernel_refuses_for_now_is_tried_again(
    monkeypatch: pytest.MonkeyPatch, session_leader: None
) -> None:
    # poly up starts payments and notifications together: the second write came within the
    # kernel's 100 ms and, without CAP_SYS_ADMIN, was refused, leaving that group at 0.
    group = _GroupFile("/autogroup-42 nice 0\n", busy=3)
    monkeypatch.setattr(priority, "_SESSION_GROUP", group)
    assert priority._raise_session_group(15) == 15
    assert group.writes == ["15"]


def test_a_group_that_stays_busy_is_reported_not_waited_on_forever(
    monkeypatch: pytest.MonkeyPatch, session_leader: None
) -> None:
    group = _GroupFile("/autogroup-42 nice 0\n", busy=1000)
    monkeypatch.setattr(priority, "_SESSION_GROUP", group)
    with pytest.raises(BlockingIOError):
        priority._raise_session_group(15)
    assert group.busy == 1000 - priority._GROUP_WRITE_ATTEMPTS


@pytest.mark.parametrize("text", ["", "garbage\n", "/autogroup-1 nice\n"])
def test_a_process_in_no_group_of_its_own_leaves_it_alone(
    monkeypatch: pytest.MonkeyPatch, session_leader: None, text: str
) -> None:
    group = _GroupFile(text)
    monkeypatch.setattr(priority, "_SESSION_GROUP", group)
    assert priority._raise_session_group(15) is None
    assert group.writes == []


def test_a_group_already_lower_is_left_as_it_is(
    monkeypatch: pytest.MonkeyPatch, session_leader: None
) -> None:
    group = _GroupFile("/autogroup-42 nice 19\n")
    monkeypatch.setattr(priority, "_SESSION_GROUP", group)
    assert priority._raise_session_group(15) == 19
    assert group.writes == []


_BACKGROUND_CHILD = textwrap.dedent(
    """
    import contextvars, json, os, sys, threading

    if len(sys.argv) > 2:  # started above normal priority (root, or systemd's Nice=-5)
        try:
            os.setpriority(os.PRIO_PROCESS, 0, int(sys.argv[2]))
        except PermissionError:
            print(json.dumps({"refused": True}))
            sys.exit(0)

    from services.kit.priority import BackgroundThreads

    def nice():
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    request_id = contextvars.ContextVar("request_id", default="")
    background = BackgroundThreads(int(sys.argv[1]))
    seen = {}

    def step():
        return {"thread": threading.get_native_id(), "nice": nice(), "request_id": request_id.get()}

    def failing():
        raise LookupError("raised in the transaction")

    def worker():
        background.enter()
        request_id.set("req-1")
        seen["worker"] = {"thread": threading.get_native_id(), "nice": nice()}
        seen["transaction"] = background.transaction(step)
        started = threading.Thread(target=lambda: seen.update(started=nice()))
        started.start()
        started.join()
        try:
            background.transaction(failing)
        except LookupError as error:
            seen["error"] = str(error)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    seen["from_a_call_thread"] = background.transaction(step)
    seen["main"] = threading.get_native_id()
    print(json.dumps(seen))
    """
)


def _background_child(nice: int, *start_nice: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _BACKGROUND_CHILD, str(nice), *map(str, start_nice)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def test_background_threads_run_below_the_calls_and_their_transactions_do_not() -> None:
    # A low-priority thread preempted inside a write transaction would hold SQLite's write
    # lock, and every caller's write behind it, until the scheduler came back to it.
    if _OURS >= 15:
        pytest.skip("the suite itself runs at nice 15 or more: no thread can run below it")
    found = _background_child(15)
    expected = 15
    assert found["worker"]["nice"] == expected
    assert found["started"] == expected, "threads a background thread starts are background too"
    transaction = found["transaction"]
    assert transaction["nice"] == _OURS, "the transaction runs at the process's priority"
    assert transaction["thread"] != found["worker"]["thread"]
    assert transaction["request_id"] == "req-1", "the caller's context goes with it"
    assert found["error"] == "raised in the transaction", "its error is raised in the caller"


def test_a_call_threads_transaction_runs_where_it_is() -> None:
    found = _background_child(15)
    assert found["from_a_call_thread"]["thread"] == found["main"]
    assert found["from_a_call_thread"]["nice"] == _OURS


def test_background_nice_zero_lowers_nothing_and_moves_nothing() -> None:
    found = _background_child(0)
    assert found["worker"]["nice"] == _OURS
    assert found["transaction"]["thread"] == found["worker"]["thread"]


def test_background_nice_zero_lowers_nothing_in_a_process_started_above_normal_priority() -> None:
    # 0 is "off" whatever the process runs at: a relay started at nice -5 stays at -5.
    found = _background_child(0, -5)
    if found.get("refused"):
        pytest.skip("raising a priority needs CAP_SYS_NICE")
    assert found["worker"]["nice"] == -5
    assert found["transaction"]["thread"] == found["worker"]["thread"]
