"""`make breaking`: ``buf breaking`` (FILE rules) of protos/ against the previous commit.

The previous commit's protos and buf.yaml are exported to a temporary folder together
with the googleapis dependency module, so buf compares two complete workspaces.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

__all__ = ["main"]

_ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=_ROOT, capture_output=True, check=False)


def _has_commit(ref: str) -> bool:
    return _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").returncode == 0


def main(against: str = "HEAD~1") -> int:
    if not _has_commit(against) and _git("rev-parse", "--is-shallow-repository").stdout.strip() == b"true":
        _git("fetch", "--quiet", "--deepen=1")  # a shallow CI clone: fetch the previous commit
    if not _has_commit(against):
        if _git("rev-parse", "--is-shallow-repository").stdout.strip() == b"true":
            print(f"buf breaking: cannot fetch {against} in this shallow clone", file=sys.stderr)
            return 1
        print(f"buf breaking: skipped, {against} does not exist (the first commit)")
        return 0
    archive = _git("archive", "--format=tar", against, "buf.yaml", "protos")
    if archive.returncode != 0:
        print(f"buf breaking: skipped, {against} has no buf.yaml and protos/ yet")
        return 0
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
            tar.extractall(base, filter="data")
        shutil.copytree(_ROOT / "build" / "proto-deps", base / "build" / "proto-deps")
        result = subprocess.run(
            [str(_ROOT / "node_modules" / ".bin" / "buf"), "breaking", "--against", str(base)],
            cwd=_ROOT,
            check=False,
        )
    if result.returncode == 0:
        print(f"buf breaking: no breaking changes against {against}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
