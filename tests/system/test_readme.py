"""Every shell example in the README, run as written against a running `poly up`.

The blocks run in order in one bash session (later sections continue the shell of earlier
ones, as the README says), from a folder laid out like a checkout after `make up`: `.venv`
and `node_modules` linked from this one, the system's state in `.poly/`. Only the ports are
changed, to free ones, so a `make up` running beside the tests is not disturbed. Each command
must succeed, except those the README marks `# refused:`, which must fail; a block the test
does not run says why in the README itself.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from services.kit import config
from tests.support.env import ROOT, free_port, poly_environ, process_environ
from tests.support.processes import Process
from tests.support.readme import ShellBlock, shell_blocks, shell_session
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

FAILED = "README-COMMAND-FAILED"
DONE = "README-EXAMPLES-DONE"
SCRIPT_TIMEOUT = 300.0


def _runnable() -> list[ShellBlock]:
    blocks = shell_blocks()
    for block in blocks:
        assert block.not_run_because is None or block.not_run_because.strip(), block
    return [block for block in blocks if block.not_run_because is None]


def _script(blocks: list[ShellBlock], ports: dict[str, int]) -> tuple[str, dict[int, int]]:
    """One bash script of the blocks, with the README's ports replaced by the test's, and
    which README line each of its lines came from."""
    lines = [
        "set -uo pipefail",  # no -e: every command runs, and the trap reports each failure
        f"trap 'echo \"{FAILED} $LINENO\" >&2' ERR",
    ]
    readme_line: dict[int, int] = {}
    for block in blocks:
        for offset, written in enumerate(block.text.splitlines()):
            line = written
            for name, default in config.DEFAULT_PORTS.items():
                line = re.sub(rf"\b{default}\b", str(ports[name]), line)
            lines.append(line)
            readme_line[len(lines)] = block.line + offset
    lines.append(f"echo {DONE}")
    return "\n".join(lines) + "\n", readme_line


def _checkout_like(folder: Path) -> Path:
    """A folder where `.venv/bin/poly`, `npx buf` and `.poly/` mean what they mean after `make up`."""
    for name in (".venv", "node_modules", "package.json", "package-lock.json"):
        (folder / name).symlink_to(ROOT / name)
    return folder


def test_every_shell_example_in_the_readme_runs_as_written(tmp_path: Path) -> None:
    blocks = _runnable()
    assert len(blocks) >= 5, "the README's examples: JSON, gRPC, identity, orders, bus"
    folder = _checkout_like(tmp_path)
    ports = {name: free_port() for name in config.DEFAULT_PORTS}
    environ = process_environ(poly_environ(folder / ".poly", ports))
    script, readme_line = _script(blocks, ports)
    up = Process.module("services.cli", environ, "up", "--log-format", "console")
    try:
        up.wait_for_line(lambda line: "all services SERVING" in line, timeout=120)
        with shell_session(script, folder, environ) as session:
            try:
                returncode = session.wait(SCRIPT_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"the README's examples did not end within {SCRIPT_TIMEOUT:.0f} s:\n"
                    + (folder / "session.log").read_text()
                )
        output = (folder / "session.log").read_text()
        assert returncode == 0 and DONE in output, output

        failed = {readme_line.get(int(n), -1) for n in re.findall(rf"^{FAILED} (\d+)$", output, re.M)}
        refused = {
            block.line + offset
            for block in blocks
            for offset, line in enumerate(block.text.splitlines())
            if line in block.refused_lines()
        }
        assert failed == refused, f"README lines failed {sorted(failed)}, refused {sorted(refused)}\n{output}"
        assert "unauthenticated" in output.lower(), output  # what the refused GetOrder answers
        assert not re.search(r"\{\"code\":\d+", output), f"an HTTP call answered an error:\n{output}"
        assert '"error"' not in output, output

        # The HTTP watch of an unfunded account's order ends at PAYMENT_FAILED (twice: NDJSON, SSE);
        # the gRPC watch of a funded one ends at PAID.
        assert output.count('"STATE_PAYMENT_FAILED"') >= 2, output
        assert '"STATE_PAID"' in output, output
        assert "data: " in output, "the Server-Sent Events watch"
        # The trace that created the order, even though watches of it came later.
        assert re.search(r"OrdersService/CreateOrder +\d", output), "poly trace $ORDER"

        def paid_emails() -> list[Path]:
            return [p for p in (folder / ".poly" / "mail").iterdir() if "Payment received" in p.read_text()]

        eventually(paid_emails, timeout=30, what="the 'Payment received' email")
        # Once, after the first order: how to see its trace, the one `poly trace "$ORDER"` drew.
        hints = re.findall(
            r"\| order placed: see its trace with `\.venv/bin/poly trace --home \S+ (\w{32})`$",
            up.output(),
            re.M,
        )
        assert len(hints) == up.output().count("order placed") == 1 and f"trace {hints[0]}  " in output, (
            up.output()
        )
    finally:
        up.stop()
