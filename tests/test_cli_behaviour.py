"""What a user meets at the command line (issue 10, items 10-13 and 16), through the
real CLI against the real server (or a stand-in where the point is a peer that is
not ftransfer): failures reported per file, trailing slashes, fast failures, kept
permission bits, no-clobber, what the summaries and bars say, IPv6 addresses,
closed pipes, usage errors, and which side a "not found" is on.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import ServerProcess, run_cli

from ftransfer.errors import ExitCode

FAST_S = 5.0
"""'Fails at once': the slow failures were a 30 s give-up or a 60 s idle timeout,
and a normal failure takes a fraction of a second; 5 s is far from both."""


def err_lines(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    return result.stderr.decode().strip().splitlines()


# ---- 10: a multi-file put reports every failure ------------------------------------


@pytest.mark.parametrize("transport", [[], ["--udp"]], ids=["tcp", "udp"])
def test_a_multi_file_put_prints_a_line_for_every_failure(
    server: ServerProcess, tmp_path: Path, transport: list[str]
) -> None:
    (tmp_path / "good").write_bytes(b"good")
    (tmp_path / "taken").write_bytes(b"new")
    (server.root / "taken").write_bytes(b"old")
    sources = [
        tmp_path / "missing-1",
        tmp_path / "good",
        tmp_path / "taken",
        tmp_path / "missing-2",
    ]
    result = run_cli("put", "-q", "--no-clobber", *transport, *map(str, sources), server.remote())
    assert result.returncode == ExitCode.NOT_FOUND  # the first failure's code
    errors = [line for line in err_lines(result) if line.startswith("ftransfer: error:")]
    assert len(errors) == 3, result.stderr
    assert "missing-1" in errors[0] and "taken: exists" in errors[1] and "missing-2" in errors[2]
    assert (server.root / "good").read_bytes() == b"good"  # the failures did not stop it
    assert (server.root / "taken").read_bytes() == b"old"


# ---- 11: trailing slashes ----------------------------------------------------------


@pytest.mark.parametrize("transport", [[], ["--udp"]], ids=["tcp", "udp"])
def test_a_trailing_slash_names_a_directory(
    server: ServerProcess, tmp_path: Path, transport: list[str]
) -> None:
    (server.root / "dir").mkdir()
    (server.root / "dir" / "file").write_bytes(b"x")
    (server.root / "empty").mkdir()
    listing = run_cli("ls", *transport, server.remote("dir/"))
    assert listing.returncode == 0 and b" file\n" in listing.stdout, listing.stderr
    stat = run_cli("stat", *transport, server.remote("dir/"))
    assert stat.returncode == 0 and b"type: directory" in stat.stdout, stat.stderr
    removed = run_cli("rm", *transport, server.remote("empty/"))
    assert removed.returncode == 0 and not (server.root / "empty").exists(), removed.stderr

    down = tmp_path / "down"
    down.mkdir()
    file_as_dir = run_cli("get", *transport, server.remote("dir/file/"), str(down))
    assert file_as_dir.returncode == ExitCode.REFUSED, file_as_dir.stderr
    assert err_lines(file_as_dir)[-1].endswith("dir/file: not a directory")
    a_dir = run_cli("get", *transport, server.remote("dir/"), str(down))
    assert a_dir.returncode == ExitCode.REFUSED, a_dir.stderr
    assert "dir/: is a directory" in err_lines(a_dir)[-1]
    assert os.listdir(down) == []
