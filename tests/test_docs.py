"""The documents say what the code does: README examples run, diagrams match the
tables, the sample unit verifies, and the repository stands alone."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ftransfer
from ftransfer.tools import diagrams

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_the_architecture_diagrams_are_the_tables_the_code_runs_on() -> None:
    document = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert diagrams.rewrite(document) == document, (
        "docs/architecture.md is out of date: python -m ftransfer.tools.diagrams "
        "--write docs/architecture.md"
    )
    for _heading, name, table, _initial in diagrams.DIAGRAMS:
        assert f"%% {name}" in document
        assert len(table) > 1


def test_the_readme_python_blocks_run_as_written(tmp_path: Path) -> None:
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 2, "the Python section shows both flavours"
    assert any("ftransfer.Client(" in b for b in blocks)
    assert any("ftransfer.AsyncClient(" in b for b in blocks)
    for number, block in enumerate(blocks):
        script = tmp_path / f"block{number}.py"
        script.write_text(block, encoding="utf-8")
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"README block {number} failed:\n{done.stderr}"
    copy = (tmp_path / "copy.bin").read_bytes()
    assert copy == (tmp_path / "a.bin").read_bytes()
    assert (tmp_path / "again.bin").read_bytes() == copy


def test_the_readme_shell_commands_name_real_subcommands() -> None:
    text = README.read_text(encoding="utf-8")
    shell = "\n".join(re.findall(r"^```sh\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE))
    used = set(re.findall(r"^ftransfer (\w+)", shell, flags=re.MULTILINE))
    used |= set(re.findall(r"`ftransfer (\w+)", text))
    from ftransfer.cli.parser import COMMANDS

    known = set(COMMANDS)
    assert used and used <= known, used - known


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_sample_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (ROOT / "samples" / "ftransfer.service").read_text(encoding="utf-8")
    installed = "/opt/ftransfer/bin/ftransfer"
    assert f"ExecStart={installed} serve" in unit
    assert "/opt/ftransfer/bin/pip install ." in README.read_text(encoding="utf-8")
    # The README installs to /opt/ftransfer; here the same command lives in this venv.
    here = shutil.which("ftransfer", path=os.path.dirname(sys.executable))
    assert here is not None
    (tmp_path / "ftransfer.service").write_text(unit.replace(installed, here), encoding="utf-8")
    done = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "ftransfer.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [line for line in done.stderr.splitlines() if "ftransfer.service" in line]
    assert done.returncode == 0 and not problems, done.stderr


def tracked_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if listed.returncode != 0:  # not a git checkout (an sdist): every file
        return [p for p in ROOT.rglob("*") if p.is_file() and ".venv" not in p.parts]
    return [ROOT / line for line in listed.stdout.splitlines()]


def test_the_repository_stands_alone() -> None:
    for name in ("LICENSE", "CHANGELOG.md", "CONTRIBUTING.md", "protocol.md"):
        assert (ROOT / name).is_file(), name
    for name in ("architecture.md", "threats.md", "perf-notes.md"):
        assert (ROOT / "docs" / name).is_file(), name
    outside = re.compile(r"\.\./shared|ARCHITECTURE\.md|PERF-NOTES\.md|THREATS\.md")
    for path in tracked_files():
        if path.suffix not in {".py", ".md", ".sh", ".toml", ".service", ".txt", ""}:
            continue
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.name == "test_docs.py":
            continue
        assert not outside.search(text), f"{path.relative_to(ROOT)} points outside the repo"


def test_no_placeholder_is_left_in_the_documents() -> None:
    """Figures are filled in from benchmark runs; a marker left behind is a hole."""
    marker = re.compile(r"\b[A-Z]+(?:-[A-Z]+)*-(?:PENDING|README)\b")
    for path in tracked_files():
        if path.suffix == ".md" and path.is_file():
            text = path.read_text(encoding="utf-8")
            assert not marker.search(text), f"{path.relative_to(ROOT)}: {marker.search(text)}"


def test_the_version_has_one_source() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'version = { attr = "ftransfer.__version__" }' in pyproject
    assert not re.search(r'^version\s*=\s*"', pyproject, flags=re.MULTILINE)
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"## {ftransfer.__version__}" in changelog
    description = pyproject.split("description = ", 1)[1].split("\n", 1)[0]
    assert all(word in description for word in ("TCP", "UDP", "TFTP")), description
