"""The TCP service (server/tcp.py): how a listing is cut into ENTRIES frames, and
how a download that cannot be read to its end is answered (protocol.md 5.2).

Batching is tested as a function; the rest through a real server, either the
subprocess (conftest.ServerProcess, the real CLI) or, where the store must
misbehave on purpose, ``ftransfer.testing.server.serving`` over a MemoryStore.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RawPeer, ServerProcess, run_cli

from ftransfer.checksum import digest_bytes
from ftransfer.config import (
    LIST_BATCH_BYTES,
    LIST_BATCH_ENTRIES,
    MAX_NAME_BYTES,
    SMALL_FILE_BYTES,
    ServerConfig,
)
from ftransfer.errors import StorageIOError
from ftransfer.proto.tcp import events as ev
from ftransfer.proto.tcp.frames import encode, encode_entry
from ftransfer.server.tcp import take_batch
from ftransfer.storage.entry import Entry, EntryKind
from ftransfer.storage.memory import MemoryReadable, MemoryStore
from ftransfer.storage.names import Name
from ftransfer.testing.server import serving

HELLO = ev.HelloOffered(min_version=4, max_version=4)

ENTRY_FIXED_BYTES = 21
"""kind u8, size u64, mtime_ns i64, mode u16, name_length u16 (protocol.md 3)."""


def _entries(names: list[str]) -> Iterator[Entry]:
    return iter(Entry(name=n, kind=EntryKind.FILE, size=7, mtime_ns=1, mode=0o644) for n in names)


def _batches(names: list[str]) -> list[list[ev.Entry]]:
    entries, out = _entries(names), []
    while batch := take_batch(entries, LIST_BATCH_BYTES):
        out.append(batch)
    return out


@pytest.mark.parametrize(
    ("what", "names"),
    [
        ("Japanese, 238 bytes", [f"{i:04d}" + "日本語の名前" * 13 for i in range(300)]),
        ("the longest names, 4-byte characters", [f"{i:03d}" + "😀" * 63 for i in range(400)]),
        ("ASCII", [f"file-{i:05d}.txt" for i in range(3000)]),
        ("one byte", [chr(ord("a") + i % 26) for i in range(2000)]),
    ],
)
def test_a_batch_is_counted_in_encoded_bytes_and_capped_at_512_entries(
    what: str, names: list[str]
) -> None:
    assert max(len(n.encode()) for n in names) <= MAX_NAME_BYTES
    batches = _batches(names)
    assert [e.name for b in batches for e in b] == names, what  # all, once, in order
    largest_entry = ENTRY_FIXED_BYTES + MAX_NAME_BYTES
    for batch in batches:
        size = sum(len(encode_entry(e)) for e in batch)
        assert len(batch) <= LIST_BATCH_ENTRIES, what
        assert size < LIST_BATCH_BYTES + largest_entry, what  # "at most about 32 KiB"
        encode(ev.Listed(entries=tuple(batch)))  # within MAX_CONTROL_BYTES: no error
    for batch in batches[:-1]:  # each full: either by bytes or by count
        size = sum(len(encode_entry(e)) for e in batch)
        assert size >= LIST_BATCH_BYTES or len(batch) == LIST_BATCH_ENTRIES, what


def test_listing_300_long_japanese_names_over_tcp(server: ServerProcess) -> None:
    names = {f"{i:03d}" + "ファイルの名前です" * 8 + "長" * 5 for i in range(300)}
    assert {len(n) for n in names} == {80}
    for name in names:
        (server.root / name).write_bytes(b"x")
    listing = run_cli("ls", server.remote())
    assert listing.returncode == 0, listing.stderr
    shown = {line.split()[-1] for line in listing.stdout.decode().splitlines()}
    assert shown == names


class _BadReadable(MemoryReadable):
    """A file whose reads fail from ``fail_at`` on (an EIO, as LocalStore maps it),
    or, given ``fd``, whose descriptor sendfile cannot read (one opened write-only:
    EBADF, as a disk's EIO would fail it)."""

    def __init__(self, readable: MemoryReadable, fail_at: int, fd: int | None) -> None:
        self.__dict__.update(readable.__dict__)
        self.fail_at, self.fd = fail_at, fd

    def fileno(self) -> int | None:
        return self.fd

    def read(self, offset: int, n: int) -> bytes:
        if offset >= self.fail_at:
            raise StorageIOError("file: Input/output error")
        return super().read(offset, n)


class _BadDiskStore(MemoryStore):
    """Files named ``bad*`` fail to read after their first MiB."""

    def __init__(self, fd: int | None = None) -> None:
        super().__init__()
        self.fd = fd

    def open_read(self, name: Name) -> MemoryReadable:
        readable = super().open_read(name)
        if not str(name).startswith("bad"):
            return readable
        return _BadReadable(readable, fail_at=1 << 20, fd=self.fd)


def _replies(peer: RawPeer, count: int) -> list[ev.Event]:
    """The next replies, until ``count`` of them are not DATA (DATA is dropped)."""
    out: list[ev.Event] = []
    while len(out) < count:
        for event in peer.events():
            assert not isinstance(event, ev.ConnectionClosed), out
            if not isinstance(event, ev.FileData):
                out.append(event)
    return out


@pytest.mark.parametrize("path", ["read", "sendfile"])
def test_a_read_error_mid_get_is_error_40_and_the_connection_goes_on(
    tmp_path: Path, path: str
) -> None:
    fd = os.open(tmp_path / "w", os.O_WRONLY | os.O_CREAT) if path == "sendfile" else None
    store = _BadDiskStore(fd)
    store.put_file("bad", os.urandom(3 << 20))
    store.put_file("good", b"fine")
    assert SMALL_FILE_BYTES < 3 << 20  # so that a descriptor means sendfile
    try:
        with serving(ServerConfig(port=0, udp=False, anonymous_write=True), store) as server:
            peer = RawPeer(server.tcp_port)
            peer.send(HELLO, ev.GetRequested(path="bad"))
            hello, started, refusal = _replies(peer, 3)
            assert isinstance(hello, ev.HelloAccepted) and isinstance(started, ev.FileStarted)
            assert isinstance(refusal, ev.Failed) and refusal.code == 40, refusal  # not END
            assert "could not be read while it was being sent" in refusal.message
            peer.send(ev.StatRequested(path="good"))  # the same connection, in step
            [stated] = _replies(peer, 1)
            assert isinstance(stated, ev.Stated) and stated.entry.size == 4
            peer.close()
    finally:
        if fd is not None:
            os.close(fd)


class _SlowDiskStore(MemoryStore):
    """Every change (remove, mkdir, move, an upload's commit) waits for ``gate``, as
    an fsync on a busy disk would; ``entered`` says one is waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.entered = threading.Event(), threading.Event()

    def _wait(self) -> None:
        self.entered.set()
        self.gate.wait(60)  # a safety net: the test opens the gate

    def remove(self, name: Name) -> None:
        self._wait()
        super().remove(name)

    def mkdir(self, name: Name, *, parents: bool) -> None:
        self._wait()
        super().mkdir(name, parents=parents)

    def move(self, source: Name, target: Name, *, exclusive: bool) -> Name:
        self._wait()
        return super().move(source, target, exclusive=exclusive)

    def place(
        self, name: Name, data: bytearray, mtime_ns: int, mode: int | None, exclusive: bool
    ) -> None:
        self._wait()
        super().place(name, data, mtime_ns, mode, exclusive)


CHANGES: dict[str, tuple[ev.Event, ...]] = {
    "remove": (ev.RemoveRequested(path="f"),),
    "mkdir": (ev.MkdirRequested(path="d", parents=False),),
    "move": (ev.MoveRequested(source="f", target="g", exclusive=False),),
    "commit": (
        ev.PutRequested(path="new", size=2, mtime_ns=-1, mode=0o644, exclusive=False),
        ev.FileData(data=b"hi"),
        ev.FileEnded(digest=digest_bytes(b"hi")),
    ),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_on_a_slow_disk_does_not_stop_other_connections(change: str) -> None:
    """While one connection's change waits on the disk, another connection is
    served. Were the change run on the event loop, the second HELLO would get no
    answer (its socket's 10 s timeout is only a safety net)."""
    store = _SlowDiskStore()
    store.put_file("f", b"file")
    with serving(ServerConfig(port=0, udp=False, anonymous_write=True), store) as server:
        try:
            slow = RawPeer(server.tcp_port)
            slow.send(HELLO, *CHANGES[change])
            assert store.entered.wait(30)
            other = RawPeer(server.tcp_port)
            other.sock.settimeout(10)
            other.send(HELLO, ev.StatRequested(path="f"))
            hello, stated = _replies(other, 2)
            assert isinstance(hello, ev.HelloAccepted) and isinstance(stated, ev.Stated)
            other.close()
        finally:
            store.gate.set()
        hello, done = _replies(slow, 2)
        assert isinstance(hello, ev.HelloAccepted), hello
        assert isinstance(done, ev.Done | ev.PutCommitted), done
        slow.close()
