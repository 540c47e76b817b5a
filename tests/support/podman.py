"""The project's image built and run with Podman, as CI does (no Docker engine here).

The base image is made locally, as no image registry is reachable: ``debootstrap`` of Debian
bookworm with python3 and its venv module, imported as `BASE`. Containers share the host's
network and listen on 127.0.0.1 only, as every server a test starts must.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from tests.support.env import ROOT

__all__ = ["BASE", "IMAGE", "build_image", "container_log", "podman", "podman_ready", "run_options"]

BASE = "localhost/poly-base:bookworm"
IMAGE = "localhost/polyservice:test"
_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
_MIRROR = "http://deb.debian.org/debian"


def podman_ready() -> str:
    """ "" when podman can build and run here, else why not."""
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman runc; .ci/run sets it up)"
    if os.geteuid() != 0:
        return "the container test runs podman as root (rootless needs subuid ranges this machine lacks)"
    return ""


def podman(*args: str, timeout: float = 120, stdin: str | None = None, check: bool = True) -> str:
    """Run ``podman ARGS``; its standard output (and error, on failure, in the exception)."""
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, input=stdin, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args[:3])} … exited {done.returncode}:\n{done.stderr[-4000:]}"
        )
    return done.stdout


def container_log(name: str) -> list[str]:
    """A container's output lines, standard output and error together (services log to stderr)."""
    done = subprocess.run(
        ["podman", "logs", name],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout.splitlines()


def _image_exists(name: str) -> bool:
    return subprocess.run(["podman", "image", "exists", name], check=False).returncode == 0


def _ensure_base() -> None:
    if _image_exists(BASE):
        return
    if shutil.which("debootstrap") is None:
        raise AssertionError("debootstrap is not installed (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(prefix="poly-base-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        made = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                "bookworm",
                str(rootfs),
                _MIRROR,
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
        archive = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["podman", "import", "-", BASE], stdin=archive.stdout, capture_output=True, text=True, check=False
        )
        archive.wait(timeout=600)
        assert imported.returncode == 0, imported.stderr


def build_image() -> str:
    """`IMAGE`, built from deploy/Dockerfile on the local base (pip reaches PyPI with the
    machine's CA bundle, passed as a build secret as the Dockerfile documents)."""
    _ensure_base()
    arguments = ["build", "--network=host", "--build-arg", f"BASE={BASE}", "-f", "deploy/Dockerfile"]
    if _CA_BUNDLE.is_file():
        arguments += ["--secret", f"id=ca,src={_CA_BUNDLE}"]
    podman(*arguments, "-t", IMAGE, str(ROOT), timeout=1500)
    # Earlier builds' images and build stages: with the vfs driver each is a full copy on disk.
    podman("image", "prune", "--force", timeout=300, check=False)
    return IMAGE


def run_options(home: Path, environ: Mapping[str, str]) -> list[str]:
    """How every container here runs: host network, read-only root, no capabilities, the
    image's non-root user, `home` as POLY_HOME and `environ` (POLY_HOME pointing inside)."""
    options = [
        "--network=host",
        "--read-only",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--log-driver=k8s-file",  # `podman logs` without journald
        "--volume",
        f"{home}:/var/lib/poly",
    ]
    for name, value in environ.items():
        options += ["--env", f"{name}={value}"]
    return options
