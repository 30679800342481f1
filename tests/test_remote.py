"""REMOTE syntax and where transfers land locally."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftransfer.client import Remote, get_target, parse_remote
from ftransfer.config import DEFAULT_PORT


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host", Remote("host", DEFAULT_PORT, "")),
        ("host/", Remote("host", DEFAULT_PORT, "")),
        ("host:7000", Remote("host", 7000, "")),
        ("host:7000/a/b", Remote("host", 7000, "a/b")),
        ("host:/a", Remote("host", DEFAULT_PORT, "a")),
        ("host/a/b/", Remote("host", DEFAULT_PORT, "a/b/")),
        ("10.0.0.1:1/x", Remote("10.0.0.1", 1, "x")),
        ("[::1]:9/x", Remote("::1", 9, "x")),
        ("[fe80::1%eth0]/x", Remote("fe80::1%eth0", DEFAULT_PORT, "x")),
        ("host//etc", Remote("host", DEFAULT_PORT, "/etc")),  # the server refuses it
    ],
)
def test_parse_remote(text: str, expected: Remote) -> None:
    assert parse_remote(text) == expected


@pytest.mark.parametrize(
    "text", ["", ":80/x", "[::1", "host:0", "host:65536", "host:x/y", "[::1]x", "host:12ab"]
)
def test_malformed_remote(text: str) -> None:
    with pytest.raises(ValueError):
        parse_remote(text)


def test_get_target(tmp_path: Path) -> None:
    assert get_target("a/b.txt", None) == Path("b.txt")
    assert get_target("a/b.txt", "-") is None
    assert get_target("a/b.txt", str(tmp_path)) == tmp_path / "b.txt"
    assert get_target("a/b.txt", "new/") == Path("new/b.txt")
    assert get_target("a/b.txt", "c.txt") == Path("c.txt")


def test_sinks_accept_only_the_announced_digest(tmp_path: Path) -> None:
    from ftransfer.checksum import digest_bytes
    from ftransfer.client import MemorySink, StdoutSink
    from ftransfer.errors import IntegrityError

    memory = MemorySink()
    memory.write(b"abc")
    memory.write(memoryview(b"def"))
    assert memory.commit(digest_bytes(b"abcdef")) == digest_bytes(b"abcdef")
    with pytest.raises(IntegrityError, match="answer received is corrupt"):
        memory.commit(digest_bytes(b"abcdeF"))
    with open(tmp_path / "out", "wb") as out:
        stream = StdoutSink(out.fileno())
        stream.write(b"xyz")
        with pytest.raises(IntegrityError, match="output written is corrupt"):
            stream.commit(digest_bytes(b"xy"))
    assert (tmp_path / "out").read_bytes() == b"xyz"


def test_put_targets_keeps_names_in_directories() -> None:
    import asyncio

    from ftransfer.client import put_targets
    from ftransfer.errors import NotFound
    from ftransfer.proto.tcp.events import Entry, EntryKind

    kinds = {"dir": EntryKind.DIRECTORY, "file": EntryKind.FILE}
    asked: list[str] = []

    async def stat(path: str) -> tuple[Entry, bytes]:
        asked.append(path)
        if path not in kinds:
            raise NotFound(path)
        return Entry(name=path, kind=kinds[path], size=0, mtime_ns=0), bytes(16)

    def targets(sources: list[str], remote: str) -> list[str]:
        pairs = asyncio.run(put_targets(stat, [Path(s) for s in sources], remote))
        return [r for _l, r in pairs]

    assert targets(["a/x.txt"], "dir") == ["dir/x.txt"]
    assert targets(["a/x.txt"], "file") == ["file"]
    assert targets(["a/x.txt"], "new.txt") == ["new.txt"]
    asked.clear()
    assert targets(["x", "y"], "d") == ["d/x", "d/y"]
    assert targets(["x"], "d/") == ["d/x"]
    assert targets(["x"], "") == ["x"]
    assert asked == []  # several sources, a trailing slash or the root need no STAT
