"""README "Use the gateway in front of your own gRPC service", run as written, with the
``poly`` command of this project built as a wheel and installed on its own: the edge works
for a foreign service with no Polyservice service running."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.env import ROOT, free_port
from tests.support.readme import shell_blocks, shell_session

pytestmark = pytest.mark.slow

SECTION = "Use the gateway in front of your own gRPC service"


def _blocks() -> list[str]:
    return [block.text for block in shell_blocks() if block.section == SECTION]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project as `pip install` puts it: a wheel, installed into a directory of its own."""
    wheels, target = tmp_path_factory.mktemp("wheels"), tmp_path_factory.mktemp("installed")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("polyservice-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def test_the_readme_example_runs_as_written_from_an_installed_wheel(installed: Path, tmp_path: Path) -> None:
    blocks = _blocks()
    assert len(blocks) == 2, "the section's two shell blocks: reflection, then a configuration file"
    ports = {"50070": str(free_port()), "8090": str(free_port()), "8091": str(free_port())}
    script = "\n".join(blocks)
    for written, port in ports.items():
        script = re.sub(rf"\b{written}\b", port, script)
    script += "\necho\npython -c \"import gateway; print('GATEWAY FROM', gateway.__file__)\"\n"
    venv_bin = str(Path(sys.executable).parent)
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("POLY_")},
        "PATH": f"{installed / 'bin'}:{venv_bin}:{os.environ['PATH']}",
        "PYTHONPATH": str(installed),  # the installed copy, not this checkout
        "TMPDIR": str(tmp_path),
    }
    with shell_session(script, tmp_path, environ, options=("-euo", "pipefail")) as session:
        returncode = session.wait(180)
    # The edge's access lines share the session's output with curl's
    # answers; take them out so that a streamed answer reads as the client got it.
    access = r'\{"time": "\d{4}-[^\n]*"logger": "poly\.access"[^\n]*\n'
    output = re.sub(access, "", (tmp_path / "session.log").read_text())
    assert returncode == 0, output
    assert f"GATEWAY FROM {installed / 'gateway' / '__init__.py'}" in output, output
    for expected in [
        '"source": "reflection"',
        '{"message":"Hello, Ada!"}',
        '{"message":"Hello, Grace!"}',
        '{"result":{"message":"Hello #1, Ada!"}}\n{"result":{"message":"Hello #2, Ada!"}}',
        'data: {"message":"Hello #2, Ada!"}',
        '{"openapi": "3.1.0", "info": {"title": "API"',
        '"source": "greeter.binpb"',
        '{"message":"Hello, Lin!"}',
        '{"openapi": "3.1.0", "info": {"title": "Greeter API"',
    ]:
        assert expected in output, output
