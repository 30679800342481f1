"""Shell completion and the man page (cli/generated.py), made from the parser and
tried in the real programs: bash completes, zsh parses, groff renders cleanly."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli

from ftransfer.cli import parser as grammar

BASH = shutil.which("bash")


def complete(script: Path, words: list[str], cwd: Path) -> list[str]:
    """What bash offers for the last word of ``ftransfer WORDS``."""
    array = " ".join(f"'{w}'" for w in ["ftransfer", *words])
    program = (
        f"source {script}; COMP_WORDS=({array}); COMP_CWORD={len(words)}; "
        '_ftransfer; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    assert BASH is not None
    done = subprocess.run(
        [BASH, "-c", program], capture_output=True, text=True, cwd=cwd, check=True
    )
    return done.stdout.split()


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_bash_completes_commands_options_choices_and_files(tmp_path: Path) -> None:
    made = run_cli("completion", "bash")
    assert made.returncode == 0
    script = tmp_path / "ftransfer.bash"
    script.write_bytes(made.stdout)
    (tmp_path / "photos").mkdir()
    assert "get" in complete(script, ["g"], tmp_path)
    assert complete(script, ["put", "--limit"], tmp_path) == ["--limit-rate"]
    assert complete(script, ["get", "--cc", ""], tmp_path) == ["bbr", "reno"]
    assert complete(script, ["user", ""], tmp_path) == ["add", "remove", "list"]
    assert complete(script, ["completion", "z"], tmp_path) == ["zsh"]
    assert complete(script, ["put", "-r", "pho"], tmp_path) == ["photos"]
    assert "--recursive" not in complete(script, ["ls", "--re"], tmp_path)  # not ls's


def test_every_option_of_every_command_is_completed_and_in_the_man_page() -> None:
    bash = run_cli("completion", "bash").stdout.decode()
    zsh = run_cli("completion", "zsh").stdout.decode()
    man = run_cli("manpage").stdout.decode()
    _parser, commands = grammar.build(None)
    for name, command in commands.items():
        assert f"{name})" in bash and f"'{name}:" in zsh and f".SS {name}" in man
        for action in command._actions:
            for option in action.option_strings:
                assert option in bash and f"'{option}[" in zsh, option
                if action.help != "==SUPPRESS==":
                    assert option.replace("-", "\\-") in man, option


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_the_zsh_function_parses(tmp_path: Path) -> None:
    script = tmp_path / "_ftransfer"
    script.write_bytes(run_cli("completion", "zsh").stdout)
    checked = subprocess.run(["zsh", "-n", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_the_man_page_renders_without_a_warning(tmp_path: Path) -> None:
    page = tmp_path / "ftransfer.1"
    page.write_bytes(run_cli("manpage").stdout)
    rendered = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", str(page)], capture_output=True, text=True
    )
    assert rendered.returncode == 0 and rendered.stderr == "", rendered.stderr
    text = re.sub(".\x08", "", rendered.stdout).replace("\u2010", "-")  # (bold, hyphens)
    assert "ftransfer - fast, verified file transfer" in text
    assert "EXIT STATUS" in text and "FTRANSFER_PASSWORD" in text
