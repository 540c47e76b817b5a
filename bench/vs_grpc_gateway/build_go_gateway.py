"""Build the Go grpc-gateway 1.6.4 anchor for ``run.py``, offline, from Debian 12 packages.

Steps (each skipped when already done, so running this again is cheap):

1. ``apt-get download`` the packages in ``PACKAGES`` into ``build/go-anchor/debs/``
2. ``dpkg-deb -x`` each into ``build/go-anchor/root/`` (nothing is installed system-wide, which
   also sidesteps the -dev packages' conflict between golang/protobuf 1.3.5 and 1.5.2)
3. protoc + the Debian plugins generate Go code for ``poly/auth/v1/auth_service.proto``, its
   resources and ``poly/options/v1/options.proto`` into ``build/go-anchor/gopath/src/polyanchor/``
   (the protos have no ``go_package``: ``M`` mappings give them one)
4. ``go build`` (GOPATH mode, Go 1.19) of ``bench/vs_grpc_gateway/main.go`` into
   ``build/go-anchor/bin/poly-go-gateway``

Usage: ``python bench/vs_grpc_gateway/build_go_gateway.py [--force]``. Needs apt-get and dpkg-deb, the
Debian package archive reachable, and the venv (for googleapis-common-protos' ``google/api``
protos). Optional tooling: ``make up``, the tests and CI never need it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = REPO / "build" / "go-anchor"
DEBS = CACHE / "debs"
UNPACKED = CACHE / "root"
GOPATH = CACHE / "gopath"
GENERATED = GOPATH / "src" / "polyanchor"
BINARY = CACHE / "bin" / "poly-go-gateway"
MAIN_GO = HERE / "main.go"
PROTOS = REPO / "protos"
PROTO_FILES = (
    "poly/auth/v1/auth_service.proto",
    "poly/auth/v1/resources.proto",
    "poly/options/v1/options.proto",
)
GO_PACKAGES = {
    "poly/auth/v1/auth_service.proto": "polyanchor/poly_auth_v1",
    "poly/auth/v1/resources.proto": "polyanchor/poly_auth_v1",
    "poly/options/v1/options.proto": "polyanchor/poly_options_v1",
}
PACKAGES = (
    # Go 1.19
    "golang-go",
    "golang-src",
    "golang-1.19-go",
    "golang-1.19-src",
    # protoc 3.21 and the well-known .protos
    "protobuf-compiler",
    "libprotoc32",
    "libprotobuf32",
    "libprotobuf-lite32",
    "libprotobuf-dev",
    # the code generators
    "protoc-gen-go",
    "protoc-gen-go-grpc",
    "golang-grpc-gateway",
    # Go sources (GOPATH): the grpc-gateway 1.6.4 runtime and what it and grpc-go 1.33 import
    "golang-github-grpc-ecosystem-grpc-gateway-dev",
    "golang-google-grpc-dev",
    "golang-google-protobuf-dev",
    "golang-github-golang-protobuf-1-5-dev",
    "golang-google-genproto-dev",
    "golang-golang-x-net-dev",
    "golang-golang-x-sys-dev",
    "golang-golang-x-text-dev",
    "golang-golang-x-oauth2-dev",
    "golang-golang-x-oauth2-google-dev",
    "golang-glog-dev",
    "golang-github-google-go-cmp-dev",
    "golang-google-cloud-compute-metadata-dev",
)
STEP_TIMEOUT_S = 900


class BuildError(RuntimeError):
    """A step failed; the message says which and why."""


def run(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    done = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=STEP_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise BuildError(f"{' '.join(argv[:3])} ... exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout


def fingerprint(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()


def stamp_matches(stamp: Path, value: str) -> bool:
    return stamp.exists() and stamp.read_text() == value


def downloaded(package: str) -> Path | None:
    found = sorted(DEBS.glob(f"{package}_*.deb"))
    return found[-1] if found else None


def download() -> bool:
    DEBS.mkdir(parents=True, exist_ok=True)
    missing = [p for p in PACKAGES if downloaded(p) is None]
    if missing:
        run(["apt-get", "download", *missing], cwd=DEBS)
        still = [p for p in missing if downloaded(p) is None]
        if still:
            raise BuildError(f"apt-get download brought no .deb for {still}")
    return bool(missing)


def unpack() -> bool:
    marks = UNPACKED / ".unpacked"
    marks.mkdir(parents=True, exist_ok=True)
    did = False
    for package in PACKAGES:
        deb = downloaded(package)
        assert deb is not None
        mark = marks / deb.name
        if not mark.exists():
            run(["dpkg-deb", "-x", str(deb), str(UNPACKED)])
            mark.touch()
            did = True
    return did


def googleapis_include() -> Path:
    """The directory holding googleapis-common-protos' ``google/api/*.proto`` (the venv's)."""
    spec = importlib.util.find_spec("google.api.annotations_pb2")
    if spec is None or spec.origin is None:
        raise BuildError("googleapis-common-protos is not installed: run this with the project's venv")
    root = Path(spec.origin).resolve().parents[2]
    if not (root / "google/api/annotations.proto").exists():
        raise BuildError(f"no google/api/annotations.proto under {root}")
    return root


def tool_env() -> dict[str, str]:
    libs = sorted({str(p.parent) for p in UNPACKED.glob("usr/lib/*/libprotobuf.so.*")})
    goroot = UNPACKED / "usr/lib/go-1.19"
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("GO")},
        "GO111MODULE": "off",
        "GOROOT": str(goroot),
        "GOPATH": f"{GOPATH}:{UNPACKED / 'usr/share/gocode'}",
        "GOCACHE": str(CACHE / "gocache"),
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
        "PATH": f"{goroot / 'bin'}:{UNPACKED / 'usr/bin'}:{os.environ.get('PATH', '')}",
        "LD_LIBRARY_PATH": ":".join([*libs, os.environ.get("LD_LIBRARY_PATH", "")]).rstrip(":"),
    }


def generate(env: dict[str, str]) -> tuple[bool, str]:
    """Generate the Go code; returns (whether it ran, the fingerprint of its inputs)."""
    debs = sorted(d.name for d in DEBS.glob("*.deb"))
    value = fingerprint(
        *debs,
        *(f"{f}={GO_PACKAGES[f]}" for f in PROTO_FILES),
        *((PROTOS / f).read_bytes() for f in PROTO_FILES),
    )
    stamp = CACHE / "generated.stamp"
    if stamp_matches(stamp, value) and GENERATED.is_dir():
        return False, value
    shutil.rmtree(GENERATED, ignore_errors=True)
    GENERATED.parent.mkdir(parents=True, exist_ok=True)
    mappings = ",".join(f"M{f}={p}" for f, p in GO_PACKAGES.items())
    bindir = UNPACKED / "usr/bin"
    protoc = [
        str(bindir / "protoc"),
        f"-I{PROTOS}",
        f"-I{UNPACKED / 'usr/include'}",
        f"-I{googleapis_include()}",
    ]
    out = GOPATH / "src"
    run(
        [
            *protoc,
            f"--plugin=protoc-gen-go={bindir / 'protoc-gen-go'}",
            f"--plugin=protoc-gen-go-grpc={bindir / 'protoc-gen-go-grpc'}",
            f"--go_out={mappings}:{out}",
            f"--go-grpc_out={mappings}:{out}",
            *PROTO_FILES,
        ],
        env=env,
    )
    # grpc-gateway 1.6.4 refuses files of two proto packages in one run: the service alone.
    run(
        [
            *protoc,
            f"--plugin=protoc-gen-grpc-gateway={bindir / 'protoc-gen-grpc-gateway'}",
            f"--grpc-gateway_out=logtostderr=true,{mappings}:{out}",
            PROTO_FILES[0],
        ],
        env=env,
    )
    if not list(GENERATED.rglob("*.pb.gw.go")):
        raise BuildError(f"protoc-gen-grpc-gateway wrote no .pb.gw.go under {GENERATED}")
    stamp.write_text(value)
    return True, value


def build(env: dict[str, str], generated: str) -> bool:
    value = fingerprint(generated, MAIN_GO.read_bytes())
    stamp = CACHE / "binary.stamp"
    if stamp_matches(stamp, value) and BINARY.exists():
        return False
    package = GENERATED / "goedge"
    package.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MAIN_GO, package / "main.go")
    BINARY.parent.mkdir(parents=True, exist_ok=True)
    run([str(UNPACKED / "usr/lib/go-1.19/bin/go"), "build", "-o", str(BINARY), "polyanchor/goedge"], env=env)
    stamp.write_text(value)
    return True


def binary_is_current() -> bool:
    """True when the built binary matches today's main.go and protos (what ``run.py`` checks)."""
    stamp = CACHE / "generated.stamp"
    if not (BINARY.exists() and stamp.exists()):
        return False
    return stamp_matches(CACHE / "binary.stamp", fingerprint(stamp.read_text(), MAIN_GO.read_bytes()))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--force", action="store_true", help="regenerate and rebuild (keeps the .debs)")
    args = parser.parse_args(argv)
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        print("needs apt-get and dpkg-deb (a Debian 12 machine)", file=sys.stderr)
        return 2
    if args.force:
        for path in (CACHE / "generated.stamp", CACHE / "binary.stamp"):
            path.unlink(missing_ok=True)
    began = time.monotonic()
    try:
        for name, step in (("download", download), ("unpack", unpack)):
            t0 = time.monotonic()
            did = step()
            print(f"{name}: {'done' if did else 'already done'} ({time.monotonic() - t0:.1f} s)", flush=True)
        env = tool_env()
        t0 = time.monotonic()
        did, generated = generate(env)
        print(f"generate: {'done' if did else 'already done'} ({time.monotonic() - t0:.1f} s)", flush=True)
        t0 = time.monotonic()
        did = build(env, generated)
        print(f"go build: {'done' if did else 'already done'} ({time.monotonic() - t0:.1f} s)", flush=True)
    except (BuildError, subprocess.TimeoutExpired) as error:
        print(f"build failed: {error}", file=sys.stderr)
        return 1
    print(f"{BINARY} ready ({time.monotonic() - began:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
