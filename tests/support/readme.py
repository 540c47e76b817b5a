"""The README's shell examples (```sh blocks), as the tests that run them read them.

A block the README test does not run says why in an HTML comment on the line before it:
``<!-- not run by the README test: <reason> -->``. A command that the README says is
refused carries a comment starting ``# refused:`` on its line.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.env import ROOT

README = ROOT / "README.md"

_BLOCK = re.compile(
    r"^(?:<!-- not run by the README test: (?P<reason>[^>]*?) -->\n)?```sh\n(?P<body>.*?)^```",
    re.S | re.M,
)
_REFUSED = re.compile(r"#\s*refused:")


@dataclass(frozen=True)
class ShellBlock:
    section: str
    """The ``## `` heading the block sits under (empty before the first)."""
    line: int
    """README line number of the block's first line."""
    text: str
    not_run_because: str | None

    def refused_lines(self) -> list[str]:
        """The commands the README says are refused (a ``# refused:`` comment)."""
        return [line for line in self.text.splitlines() if _REFUSED.search(line)]


def shell_blocks(readme: Path = README) -> list[ShellBlock]:
    text = readme.read_text(encoding="utf-8")
    headings = [(m.start(), m.group(1)) for m in re.finditer(r"^## (.+)$", text, re.M)]
    blocks = []
    for match in _BLOCK.finditer(text):
        body_start = match.start("body")
        section = next((title for start, title in reversed(headings) if start < body_start), "")
        blocks.append(
            ShellBlock(
                section=section,
                line=text.count("\n", 0, body_start) + 1,
                text=match.group("body"),
                not_run_because=match.group("reason"),
            )
        )
    return blocks


@contextlib.contextmanager
def shell_session(
    script: str, cwd: Path, environ: dict[str, str], *, options: tuple[str, ...] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    """`script` running in bash in `cwd`, its output in ``cwd/session.log``; on leaving, the
    whole process group (what the script started in the background too) gets SIGTERM."""
    # Output to a file, not a pipe: a process the script puts in the background keeps it open.
    with (cwd / "session.log").open("wb") as log:
        process = subprocess.Popen(
            ["bash", *options, "-c", script],
            cwd=cwd,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
