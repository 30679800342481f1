"""The client's local side: URLs and REMOTE, where files go, sinks, temporaries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftransfer.checksum import digest_bytes
from ftransfer.client.local import FileSink, MemorySink, OutputClosed, StreamSink
from ftransfer.client.plan import get_target, put_targets
from ftransfer.client.urls import Url, format_address, parse_url
from ftransfer.config import DEFAULT_PORT, TEMP_PREFIX, TFTP_PORT
from ftransfer.errors import Exists, IntegrityError
from ftransfer.storage.atomic import UNPARSED_STALE_S, is_stale, temp_name


def tcp(host: str, port: int = DEFAULT_PORT, path: str = "") -> Url:
    return Url(scheme="tcp", host=host, port=port, path=path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host", tcp("host")),
        ("host/", tcp("host")),
        ("host:7000", tcp("host", 7000)),
        ("host:7000/a/b", tcp("host", 7000, "a/b")),
        ("host:/a", tcp("host", path="a")),
        ("host/a/b/", tcp("host", path="a/b/")),
        ("10.0.0.1:1/x", tcp("10.0.0.1", 1, "x")),
        ("[::1]:9/x", tcp("::1", 9, "x")),
        ("[fe80::1%eth0]/x", tcp("fe80::1%eth0", path="x")),
        ("::1", tcp("::1")),
        ("::1/dir", tcp("::1", path="dir")),
        ("2001:db8::1", tcp("2001:db8::1")),
        ("host//etc", tcp("host", path="/etc")),  # the server refuses it
        ("udp://host:5/f", Url(scheme="udp", host="host", port=5, path="f")),
        ("TFTP://host/f", Url(scheme="tftp", host="host", port=TFTP_PORT, path="f")),
        ("tcp://[::1]", tcp("::1")),
    ],
)
def test_parse_url(text: str, expected: Url) -> None:
    assert parse_url(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", ":80/x", "[::1", "host:0", "host:65536", "host:x/y", "[::1]x", "host:12ab", "ftp://h"],
)
def test_malformed_urls(text: str) -> None:
    with pytest.raises(ValueError):
        parse_url(text)


def test_addresses_print_ipv6_in_brackets() -> None:
    assert format_address("::1", 9021) == "[::1]:9021"
    assert format_address("10.0.0.1", 1) == "10.0.0.1:1"
    assert str(parse_url("udp://[::1]:5/x")) == "udp://[::1]:5/x"


def test_get_target(tmp_path: Path) -> None:
    assert get_target("a/b.txt", None) == "b.txt"
    assert get_target("a/b.txt", "-") is None
    assert get_target("a/b.txt", str(tmp_path)) == os.path.join(tmp_path, "b.txt")
    assert get_target("a/b.txt", "new/") == os.path.join("new/", "b.txt")
    assert get_target("a/b.txt", "c.txt") == "c.txt"


def test_put_targets_keep_names_in_directories() -> None:
    assert put_targets(["a/x.txt"], "dir", remote_is_dir=True) == ["dir/x.txt"]
    assert put_targets(["a/x.txt"], "file", remote_is_dir=False) == ["file"]
    assert put_targets(["x", "y"], "d", remote_is_dir=False) == ["d/x", "d/y"]
    assert put_targets(["x"], "d/", remote_is_dir=False) == ["d/x"]
    assert put_targets(["x/"], "", remote_is_dir=False) == ["x"]


def test_sinks_accept_only_the_announced_digest(tmp_path: Path) -> None:
    memory = MemorySink()
    memory.write(b"abc")
    memory.write(memoryview(b"def"))
    assert memory.commit(digest_bytes(b"abcdef")) == digest_bytes(b"abcdef")
    with pytest.raises(IntegrityError, match="answer received is corrupt"):
        memory.commit(digest_bytes(b"abcdeF"))
    with open(tmp_path / "out", "wb") as out:
        stream = StreamSink(out.fileno())
        stream.write(b"xyz")
        with pytest.raises(IntegrityError, match="output written is corrupt"):
            stream.commit(digest_bytes(b"xy"))
    assert (tmp_path / "out").read_bytes() == b"xyz"


def test_a_closed_pipe_is_output_closed_not_an_io_error() -> None:
    read, write = os.pipe()
    os.close(read)
    with pytest.raises(OutputClosed):
        StreamSink(write).write(b"nobody reads this")
    os.close(write)


def test_a_file_sink_commits_whole_with_the_servers_mtime_and_mode(tmp_path: Path) -> None:
    target = tmp_path / "got.sh"
    sink = FileSink(str(target), size=5, mtime_ns=10**18, mode=0o750, exclusive=False)
    sink.write(b"hello")
    assert not target.exists()
    sink.commit(digest_bytes(b"hello"))
    sink.abort()
    assert target.read_bytes() == b"hello" and os.stat(target).st_mtime_ns == 10**18
    assert os.stat(target).st_mode & 0o777 == 0o750 & ~_umask()
    with pytest.raises(Exists, match="no-clobber"):
        FileSink(str(target), size=1, mtime_ns=-1, mode=None, exclusive=True)
    assert [n for n in os.listdir(tmp_path) if n.startswith(TEMP_PREFIX)] == []


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_temporaries_of_dead_writers_are_stale_and_live_ones_are_not(tmp_path: Path) -> None:
    mine = temp_name()
    assert mine.startswith(TEMP_PREFIX) and not is_stale(mine, 0.0, 0.0)
    dead = subprocess.run(
        [
            sys.executable,
            "-c",
            "from ftransfer.storage.atomic import temp_name; print(temp_name())",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert is_stale(dead, 0.0, 0.0)  # its process has exited
    unparsed = TEMP_PREFIX + "0123456789abcdef"  # 0.1's shape, or placed by hand
    assert not is_stale(unparsed, 1000.0, 1000.0)  # perhaps written right now
    assert is_stale(unparsed, 0.0, UNPARSED_STALE_S + 1.0)
    other_boot = (
        TEMP_PREFIX
        + mine.removeprefix(TEMP_PREFIX)[:8]
        + "00000000"
        + mine[len(TEMP_PREFIX) + 16 :]
    )
    assert is_stale(other_boot, 0.0, 0.0)


def test_the_next_download_removes_what_a_killed_client_left(tmp_path: Path) -> None:
    script = f"""
import os
from ftransfer.client.local import FileSink
sink = FileSink({str(tmp_path / "big.bin")!r}, size=10, mtime_ns=-1, mode=None, exclusive=False)
sink.write(b"half")
os._exit(9)
"""
    assert subprocess.run([sys.executable, "-c", script], check=False).returncode == 9
    assert len([n for n in os.listdir(tmp_path) if n.startswith(TEMP_PREFIX)]) == 1
    sink = FileSink(str(tmp_path / "other"), size=1, mtime_ns=-1, mode=None, exclusive=False)
    sink.abort()
    assert [n for n in os.listdir(tmp_path) if n.startswith(TEMP_PREFIX)] == []


def test_the_client_imports_where_the_servers_jail_flags_do_not_exist() -> None:
    script = """
import os
del os.O_DIRECTORY, os.O_NOFOLLOW
import ftransfer.client, ftransfer.client.local, ftransfer.client.tcp, ftransfer.cli.commands
from ftransfer.client.local import LocalFile
print("imported")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.stdout.strip() == "imported", result.stderr


ORPHAN = """
import sys
from ftransfer.client.local import FileSink
sink = FileSink(sys.argv[1], size=3, mtime_ns=-1, mode=None, exclusive=False)
sink.write(b"abc")
# No abort and no commit: as when a signal lands before the sink reaches its
# caller. The process exits normally (the CLI's exit after Ctrl-C or SIGTERM).
"""


def test_a_temporary_nothing_holds_is_removed_when_the_process_exits(tmp_path: Path) -> None:
    other = tmp_path / f"{TEMP_PREFIX}0000000000000000-1-1-deadbeef"  # someone else's
    other.write_bytes(b"")
    target = tmp_path / "down.bin"
    subprocess.run([sys.executable, "-c", ORPHAN, str(target)], check=True, timeout=60)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [other.name]  # ours is gone, the other owner's is not ours to touch
