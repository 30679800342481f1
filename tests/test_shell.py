"""``ftransfer shell`` through a real pseudo-terminal (pexpect): login once, list,
complete a name, transfer both ways, abort a transfer with Ctrl-C and go on,
leave with Ctrl-D; and -b batches."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from conftest import CLI, ServerProcess, run_cli, temporaries

TIMEOUT = 60  # (a deadline for each expected output, not a measured time)


@pytest.fixture
def session(server: ServerProcess, tmp_path: Path) -> Iterator[pexpect.spawn[str]]:
    here = tmp_path / "local"
    here.mkdir()
    child = pexpect.spawn(
        CLI[0],
        [*CLI[1:], "shell", "--limit-rate", "200K", f"127.0.0.1:{server.port}"],
        cwd=str(here),
        env=dict(os.environ),
        encoding="utf-8",
        timeout=TIMEOUT,
        dimensions=(24, 100),
    )
    yield child
    child.close(force=True)


def prompt(server: ServerProcess, directory: str = "") -> str:
    return re.escape(f"ftransfer 127.0.0.1:{server.port}:/{directory}> ")


def test_a_session_lists_completes_transfers_aborts_and_leaves(
    session: pexpect.spawn[str], server: ServerProcess, tmp_path: Path
) -> None:
    (server.root / "reports").mkdir()
    (server.root / "reports" / "summary-2026.txt").write_bytes(b"numbers")
    here = tmp_path / "local"
    (here / "big.bin").write_bytes(os.urandom(3_000_000))  # 15 s at the shell's 200K/s
    session.expect(prompt(server))
    session.sendline("ls")
    session.expect("reports/")
    session.expect(prompt(server))
    session.sendline("cd reports")
    session.expect(prompt(server, "reports"))
    session.send("get sum\t")  # tab completion of a remote name
    session.expect("summary-2026.txt")
    session.sendline("")
    session.expect(prompt(server, "reports"))
    assert (here / "summary-2026.txt").read_bytes() == b"numbers"
    session.sendline("put big.bin")
    session.expect("big.bin")  # its progress bar is drawn: the upload is under way
    session.sendintr()  # Ctrl-C
    session.expect("interrupted")
    session.expect(prompt(server, "reports"))
    assert not (server.root / "reports" / "big.bin").exists()
    session.sendline("mkdir later")  # the session goes on after the abort
    session.expect(prompt(server, "reports"))
    assert (server.root / "reports" / "later").is_dir()
    session.sendline("pwd")
    session.expect("/reports")
    session.sendeof()  # Ctrl-D leaves
    session.expect(pexpect.EOF)
    session.close()
    assert session.exitstatus == 0
    assert temporaries(server.root) == [] and temporaries(here) == []


def test_a_user_logs_in_once_at_the_prompt_and_transfers_both_ways(
    served: Path, tmp_path: Path
) -> None:
    users = tmp_path / "users"
    added = subprocess.run(
        [*CLI, "user", "add", "alice", "--users", str(users), "--password-stdin"],
        input="wonderland-7\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    proc = ServerProcess(served, "--users", str(users), log=tmp_path / "server.log")
    here = tmp_path / "local"
    here.mkdir()
    (here / "notes.txt").write_bytes(b"my notes")
    env = {k: v for k, v in os.environ.items() if k != "FTRANSFER_PASSWORD"}
    child = pexpect.spawn(
        CLI[0],
        [*CLI[1:], "shell", f"alice@127.0.0.1:{proc.port}"],
        cwd=str(here),
        env=env,
        encoding="utf-8",
        timeout=TIMEOUT,
    )
    try:
        child.expect("alice@127.0.0.1's password: ")  # on the terminal, never an argument
        child.sendline("wonderland-7")
        child.expect(prompt(proc))
        child.sendline("put notes.txt")
        child.expect(prompt(proc))
        child.sendline("ls")
        child.expect("notes.txt")
        child.expect(prompt(proc))
        child.sendline("get notes.txt copy.txt")
        child.expect(prompt(proc))
        child.sendline("exit")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        assert (served / "alice" / "notes.txt").read_bytes() == b"my notes"
        assert (here / "copy.txt").read_bytes() == b"my notes"
        logins = [
            line for line in (tmp_path / "server.log").read_text().splitlines() if " login" in line
        ]
        assert len(logins) == 1, logins  # one connection, one login, for the session
    finally:
        child.close(force=True)
        assert proc.stop() == 0


def test_a_batch_stops_at_its_first_failure(server: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"a")
    batch = tmp_path / "commands"
    batch.write_text(
        f"lcd {tmp_path}\nmkdir -p in/deep\ncd in\nput a.txt\nrm missing\nmkdir never\n"
    )
    done = run_cli("shell", "-b", str(batch), f"127.0.0.1:{server.port}")
    assert done.returncode == 4, done.stderr  # rm's "not found", and nothing after it
    assert (server.root / "in" / "a.txt").read_bytes() == b"a"
    assert not (server.root / "in" / "never").exists()
    assert b"ftransfer> rm missing" in done.stdout and b"No such file" in done.stderr


def test_names_with_dots_are_resolved_here(server: ServerProcess, tmp_path: Path) -> None:
    (server.root / "a" / "b").mkdir(parents=True)
    (server.root / "top.txt").write_bytes(b"top")
    batch = "cd a/b\ncd ..\npwd\nstat ../top.txt\ncd /\npwd\n"
    done = run_cli_input(["shell", "-b", "-", f"127.0.0.1:{server.port}"], batch)
    assert done.returncode == 0, done.stderr
    assert b"/a\n" in done.stdout and b"size: 3" in done.stdout


def run_cli_input(args: list[str], text: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CLI, *args], input=text.encode(), capture_output=True, timeout=120, check=False
    )


def test_an_unknown_command_stops_a_batch_as_a_usage_error(server: ServerProcess) -> None:
    done = run_cli_input(
        ["shell", "-b", "-", f"127.0.0.1:{server.port}"], "pwd\nfrobnicate x\npwd\n"
    )
    assert done.returncode == 2
    assert b"frobnicate: unknown command" in done.stderr
    assert done.stdout.count(b"ftransfer> pwd") == 1  # nothing after the failure
