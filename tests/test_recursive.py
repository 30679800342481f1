"""put -r, get -r, several sources and patterns: the real server and the real CLI."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from conftest import ServerProcess, run_cli, temporaries

from ftransfer.errors import ExitCode

OLD_NS = 1_600_000_000 * 10**9
"""A file time in 2020: a copy that kept it did not get the clock's."""


def make_tree(root: Path) -> dict[str, bytes]:
    """A small tree: nested, an empty directory, an executable, a symlink, old times."""
    files = {
        "a/x.txt": b"x" * 10,
        "a/b/run.sh": b"#!/bin/sh\necho hi\n",
        "a/b/c/deep.bin": os.urandom(70_000),
        "top.bin": os.urandom(5),
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, ns=(OLD_NS, OLD_NS))
    (root / "a" / "b" / "run.sh").chmod(0o755)
    (root / "empty").mkdir()
    (root / "a" / "link").symlink_to("x.txt")
    os.utime(root / "a", ns=(OLD_NS, OLD_NS))
    return files


def assert_same_tree(got: Path, files: dict[str, bytes]) -> None:
    found = sorted(str(p.relative_to(got)) for p in got.rglob("*"))
    dirs = ["a", "a/b", "a/b/c", "empty"]
    assert found == sorted([*files, *dirs]), found
    for name, data in files.items():
        assert (got / name).read_bytes() == data
        assert (got / name).stat().st_mtime_ns == OLD_NS
    assert (got / "a/b/run.sh").stat().st_mode & stat.S_IXUSR
    assert not (got / "a/x.txt").stat().st_mode & stat.S_IXUSR


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_a_tree_goes_up_and_comes_back_whole(
    server: ServerProcess, tmp_path: Path, transport: str
) -> None:
    files = make_tree(tmp_path / "src")
    via = ["--udp"] if transport == "udp" else []
    put = run_cli("put", "-r", "-q", *via, str(tmp_path / "src"), server.remote("up"))
    assert put.returncode == 0, put.stderr
    # the symlink is skipped with one warning line, never followed
    assert put.stderr.decode().count("a symbolic link, skipped") == 1, put.stderr
    assert_same_tree(server.root / "up", files)
    got = run_cli("get", "-r", "-q", *via, server.remote("up"), str(tmp_path / "copy"))
    assert got.returncode == 0, got.stderr
    assert_same_tree(tmp_path / "copy", files)
    # a download gives directories the server's times (an upload cannot: no request sets one)
    served_time = (server.root / "up" / "a").stat().st_mtime_ns
    assert (tmp_path / "copy" / "a").stat().st_mtime_ns == served_time
    assert temporaries(server.root) == [] and temporaries(tmp_path) == []


def test_into_an_existing_directory_the_tree_keeps_its_name(
    server: ServerProcess, tmp_path: Path
) -> None:
    files = make_tree(tmp_path / "src")
    (server.root / "backup").mkdir()
    assert (
        run_cli("put", "-r", "-q", str(tmp_path / "src"), server.remote("backup")).returncode == 0
    )
    assert_same_tree(server.root / "backup" / "src", files)
    (tmp_path / "here").mkdir()
    got = run_cli("get", "-r", "-q", server.remote("backup/src"), str(tmp_path / "here"))
    assert got.returncode == 0, got.stderr
    assert_same_tree(tmp_path / "here" / "src", files)


def test_patterns_and_several_sources_go_into_one_directory(
    server: ServerProcess, tmp_path: Path
) -> None:
    logs = server.root / "logs"
    logs.mkdir()
    for name in ("a.gz", "b.gz", "c.txt", ".hidden.gz"):
        (logs / name).write_bytes(name.encode())
    (server.root / "notes.txt").write_bytes(b"notes")
    got = run_cli(
        "get", "-q", server.remote("logs/*.gz"), server.remote("notes.txt"), str(tmp_path / "new")
    )
    assert got.returncode == 0, got.stderr
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["a.gz", "b.gz", "notes.txt"]
    assert (tmp_path / "new" / "b.gz").read_bytes() == b"b.gz"
    missing = run_cli("get", "-q", server.remote("logs/*.zip"), str(tmp_path / "new"))
    assert missing.returncode == ExitCode.NOT_FOUND
    assert b"logs/*.zip: no match" in missing.stderr


def test_a_failed_subtree_does_not_stop_the_others(server: ServerProcess, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "src")
    up = server.root / "up" / "src"
    up.mkdir(parents=True)
    (up / "a").write_bytes(b"a file where the tree has a directory")
    put = run_cli("put", "-r", "-q", str(tmp_path / "src"), server.remote("up"))
    # one line for the directory that could not be made, and the exit code of that failure
    errors = [line for line in put.stderr.decode().splitlines() if "error:" in line]
    assert len(errors) == 1 and "up/src/a" in errors[0], put.stderr
    assert put.returncode == ExitCode.REFUSED
    assert (up / "top.bin").read_bytes() == files["top.bin"]
    assert (up / "empty").is_dir()
    assert (up / "a").read_bytes().startswith(b"a file")


def test_get_r_leaves_existing_files_with_no_clobber_and_fetches_the_rest(
    server: ServerProcess, tmp_path: Path
) -> None:
    files = make_tree(tmp_path / "src")
    assert run_cli("put", "-r", "-q", str(tmp_path / "src"), server.remote("up")).returncode == 0
    copy = tmp_path / "copy" / "up"  # (copy exists: the tree goes into it, as copy/up)
    (copy / "a").mkdir(parents=True)
    (copy / "a" / "x.txt").write_bytes(b"mine")
    got = run_cli("get", "-r", "-q", "--no-clobber", server.remote("up"), str(tmp_path / "copy"))
    # the refused file's bytes were read and dropped: the files after it still came
    assert got.returncode == ExitCode.REFUSED, got.stderr
    assert b"x.txt: exists, not replaced" in got.stderr
    assert (copy / "a" / "x.txt").read_bytes() == b"mine"
    assert (copy / "a" / "b" / "c" / "deep.bin").read_bytes() == files["a/b/c/deep.bin"]
    assert (copy / "top.bin").read_bytes() == files["top.bin"]


def test_a_directory_needs_r(server: ServerProcess, tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    put = run_cli("put", "-q", str(tmp_path / "src"), server.remote("up"))
    assert put.returncode == ExitCode.REFUSED and b"is a directory (-r uploads" in put.stderr
    (server.root / "d").mkdir()
    got = run_cli("get", "-q", server.remote("d/"), str(tmp_path / "out"))
    assert got.returncode == ExitCode.REFUSED and b"is a directory" in got.stderr
    several = run_cli("get", "-q", server.remote("d"), server.remote("d"), str(tmp_path / "o"))
    assert several.returncode == ExitCode.REFUSED and b"is a directory (use -r)" in several.stderr


def test_tftp_cannot_walk_trees(server: ServerProcess, tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    put = run_cli("put", "-r", "-q", str(tmp_path / "src"), f"tftp://127.0.0.1:{server.port}/up")
    assert put.returncode != 0 and b"cannot create directories" in put.stderr
    assert not (server.root / "up").exists()


def test_every_remote_names_one_server(server: ServerProcess, tmp_path: Path) -> None:
    other = f"127.0.0.2:{server.port}/x"
    got = run_cli("get", server.remote("a"), other, str(tmp_path))
    assert got.returncode == ExitCode.USAGE and b"the same server" in got.stderr


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_a_second_put_of_an_unchanged_tree_sends_no_file(
    server: ServerProcess, tmp_path: Path, transport: str
) -> None:
    files = make_tree(tmp_path / "src")
    via = ["--udp"] if transport == "udp" else []
    src, remote = str(tmp_path / "src"), server.remote("up/")  # into up/: up/src each time
    served = server.root / "up" / "src"
    assert run_cli("put", "-r", "-q", *via, src, remote).returncode == 0
    inodes = {name: (served / name).stat().st_ino for name in files}
    again = run_cli("put", "-r", "--update", "--json", *via, src, remote)
    assert again.returncode == 0, again.stderr
    assert again.stdout == b""  # no transfer record: nothing was sent
    assert f"{len(files)} already there (same size and mtime)".encode() in again.stderr
    assert {n: (served / n).stat().st_ino for n in files} == inodes
    # a changed file (new size) and one with a new mtime are sent; --checksum looks
    # past the mtime to the bytes, so only the changed one goes then
    (tmp_path / "src" / "top.bin").write_bytes(b"changed")
    os.utime(tmp_path / "src" / "a" / "x.txt")
    update = run_cli("put", "-r", "--update", "--json", *via, src, remote)
    assert sorted(sent(update.stdout)) == ["up/src/a/x.txt", "up/src/top.bin"]
    (tmp_path / "src" / "top.bin").write_bytes(b"again!!")  # same size, new bytes
    os.utime(tmp_path / "src" / "a" / "b" / "run.sh")
    checksum = run_cli("put", "-r", "--checksum", "--json", *via, src, remote)
    assert sent(checksum.stdout) == ["up/src/top.bin"]
    assert (served / "top.bin").read_bytes() == b"again!!"


def sent(out: bytes) -> list[str]:
    """The remote paths of the --json transfer records."""
    return [str(json.loads(line)["path"]) for line in out.splitlines()]


def test_get_skips_what_is_already_here(server: ServerProcess, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "src")
    assert run_cli("put", "-r", "-q", str(tmp_path / "src"), server.remote("up")).returncode == 0
    here = tmp_path / "here"
    here.mkdir()  # (an existing directory: the tree goes into it as here/up each time)
    assert run_cli("get", "-r", "-q", server.remote("up"), str(here)).returncode == 0
    again = run_cli("get", "-r", "--update", "--json", server.remote("up"), str(here))
    assert again.returncode == 0 and again.stdout == b"", again.stderr
    copy = here / "up"
    (copy / "a" / "x.txt").write_bytes(b"local edit")  # another size: fetched again
    os.utime(copy / "top.bin")  # only the time differs: --checksum leaves it
    got = run_cli("get", "-r", "--checksum", "--json", server.remote("up"), str(here))
    assert got.returncode == 0, got.stderr
    assert sent(got.stdout) == ["up/a/x.txt"]
    assert (copy / "a" / "x.txt").read_bytes() == files["a/x.txt"]
    assert b"3 already there (same digest)" in got.stderr


def test_several_sources_into_a_local_file_fail_once_and_write_nothing(
    server: ServerProcess, tmp_path: Path
) -> None:
    (server.root / "a").write_bytes(b"a")
    (server.root / "b").write_bytes(b"b")
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"mine")
    got = run_cli("get", "-q", server.remote("a"), server.remote("b"), str(blocker))
    errors = [line for line in got.stderr.decode().splitlines() if "error:" in line]
    assert len(errors) == 1 and "not a directory" in errors[0], got.stderr
    assert got.returncode == ExitCode.REFUSED
    assert blocker.read_bytes() == b"mine"


def test_transport_options_do_not_apply_to_tftp(server: ServerProcess, tmp_path: Path) -> None:
    got = run_cli("get", "--transport", "auto", f"tftp://127.0.0.1:{server.port}/a", str(tmp_path))
    assert got.returncode == ExitCode.USAGE and b"does not apply to tftp://" in got.stderr
