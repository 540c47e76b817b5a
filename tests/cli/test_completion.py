"""`poly completion bash|zsh`: static scripts generated from the parser (shtab)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from services.cli.main import build_parser
from tests.support.env import poly_environ
from tests.support.processes import run_module


def _script(tmp_path: Path, shell: str) -> Path:
    done = run_module("services.cli", poly_environ(tmp_path), "completion", shell)
    assert done.returncode == 0, done.stderr
    script = tmp_path / f"poly.{shell}"
    script.write_text(done.stdout)
    return script


def _subcommands() -> list[str]:
    commands = next(a for a in build_parser()._actions if isinstance(a.choices, dict))
    return list(commands.choices or {})


def _complete(script: Path, words: list[str]) -> list[str]:
    """What bash offers for the last of `words`, with the script sourced as a user would."""
    program = f"""
source {script}
function=$(complete -p poly | sed -n 's/.* -F \\([^ ]*\\) .*/\\1/p')
COMP_WORDS=({" ".join(words)} '')
COMP_WORDS[-1]={words[-1]}
COMP_CWORD={len(words) - 1}
COMP_LINE="{" ".join(words)}"
COMP_POINT=${{#COMP_LINE}}
"$function" poly {words[-1]} {words[-2]}
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_bash_script_is_valid_bash(tmp_path: Path) -> None:
    script = _script(tmp_path, "bash")
    checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize(
    ("words", "offered"),
    [
        (["poly", "st"], ["status"]),
        (["poly", "c"], ["certs", "completion"]),
        (["poly", "bus", "status", "or"], ["orders"]),
        (["poly", "keys", "r"], ["rotate"]),
        (["poly", "completion", "z"], ["zsh"]),
    ],
    ids=["command", "two-commands", "bus-service", "keys-action", "shell"],
)
def test_bash_completes_commands_and_their_choices(
    tmp_path: Path, words: list[str], offered: list[str]
) -> None:
    assert sorted(_complete(_script(tmp_path, "bash"), words)) == offered


def test_the_zsh_script_names_every_command(tmp_path: Path) -> None:
    text = _script(tmp_path, "zsh").read_text()
    assert text.startswith("#compdef poly")
    for command in _subcommands():
        assert re.search(rf"^\s*['\"]?{command}[:'\"]", text, re.MULTILINE), command
    if shutil.which("zsh"):  # not installed everywhere; where it is, the recipe of `poly --help` must work
        script = tmp_path / "poly.zsh"
        parsed = subprocess.run(["zsh", "-n", str(script)], capture_output=True, text=True, check=False)
        assert parsed.returncode == 0, parsed.stderr
        program = f'autoload -U compinit && compinit -u -d {tmp_path}/zcompdump; eval "$(<{script})"; '
        program += "print -r -- ${_comps[poly]}"
        enabled = subprocess.run(["zsh", "-f", "-c", program], capture_output=True, text=True, check=False)
        assert (enabled.returncode, enabled.stderr) == (0, "")
        assert enabled.stdout.strip().startswith("_shtab_poly"), enabled.stdout
