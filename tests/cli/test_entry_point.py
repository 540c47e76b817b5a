"""`poly` answers at once: its entry point and its light commands import no heavy library.

An import check, not a timing: each case runs in a fresh interpreter and lists which of
SQLAlchemy, Alembic, gRPC and cryptography it loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.support.env import ROOT, poly_environ, process_environ
from tests.support.processes import run_module

HEAVY = ("sqlalchemy", "alembic", "grpc", "cryptography")

_RUN = """
import contextlib, io, json, sys

status = None
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    if sys.argv[1:] == ["--import-only"]:
        import services.cli.main
    else:
        from services.cli.main import main
        try:
            status = main(sys.argv[1:])
        except SystemExit as exit:
            status = exit.code
heavy = sorted({m.partition(".")[0] for m in sys.modules} & set(json.loads(sys.stdin.read())))
print(json.dumps({"status": status, "heavy": heavy}))
"""


def _loaded(environ: dict[str, str], *args: str) -> tuple[object, list[str]]:
    """(exit status, heavy libraries imported) of ``poly ARGS`` in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", _RUN, *args],
        input=json.dumps(HEAVY),
        capture_output=True,
        text=True,
        timeout=60,
        env=process_environ(environ),
        cwd=ROOT,
        check=True,
    )
    answer = json.loads(done.stdout)
    return answer["status"], answer["heavy"]


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (["--import-only"], None),
        (["--help"], 0),
        (["--version"], 0),
        (["status", "--help"], 0),
        (["completion", "bash"], 0),
        (["frobnicate"], 2),
    ],
    ids=["import", "help", "version", "status-help", "completion", "unknown-command"],
)
def test_the_light_paths_import_no_heavy_library(tmp_path: Path, args: list[str], status: int | None) -> None:
    assert _loaded(poly_environ(tmp_path), *args) == (status, [])


def test_status_loads_grpc_but_no_database_or_certificate_library(tmp_path: Path, certs: Path) -> None:
    # Nothing runs on the chosen ports: every component is DOWN, hence status 1.
    environ = poly_environ(tmp_path, POLY_TLS_DIR=str(certs))
    assert _loaded(environ, "status") == (1, ["grpc"])


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    done = run_module("services.cli", poly_environ(tmp_path), "--version")
    assert (done.returncode, done.stdout) == (0, f"poly {version('polyservice')}\n")
