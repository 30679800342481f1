"""Storage: every name row of THREATS.md, containment, atomic commit under faults."""

from __future__ import annotations

import errno
import os
import random
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ftransfer.checksum import digest_bytes
from ftransfer.config import TEMP_PREFIX
from ftransfer.errors import (
    DirectoryNotEmpty,
    Exists,
    FtransferError,
    IntegrityError,
    IsADirectory,
    NoSpace,
    NotADirectory,
    NotFound,
    NotRegularFile,
    PathRefused,
    ReadOnly,
    StorageIOError,
    TooLarge,
)
from ftransfer.proto.tcp.events import EntryKind
from ftransfer.storage import READ_AHEAD_BYTES, BlockReader, Storage, split_name


@pytest.fixture
def root(tmp_path: Path) -> Path:
    served = tmp_path / "root"
    served.mkdir()
    (served / "old.txt").write_bytes(b"old content")
    (served / "sub").mkdir()
    (served / "sub" / "inner.txt").write_bytes(b"inner")
    (tmp_path / "root2").mkdir()
    (tmp_path / "root2" / "secret").write_bytes(b"sibling secret")
    (tmp_path / "outside.txt").write_bytes(b"outside")
    return served


@pytest.fixture
def storage(root: Path) -> Iterator[Storage]:
    s = Storage(root, max_file_bytes=1 << 30)
    yield s
    s.close()


def put(storage: Storage, name: str, data: bytes, *, exclusive: bool = False) -> bytes:
    with storage.begin_write(name, size=len(data), mtime_ns=-1, exclusive=exclusive) as writer:
        writer.write(data)
        return writer.commit(digest_bytes(data))


def temporaries(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if n.startswith(TEMP_PREFIX)]


BAD_NAMES = [
    "",
    ".",
    "..",
    "../outside.txt",
    "sub/../../outside.txt",
    "sub/..",
    "./old.txt",
    "/etc/passwd",
    "//etc/passwd",
    "sub//inner.txt",
    "sub/",
    "..\\outside.txt",
    "sub\\inner.txt",
    "C:",
    "c:/windows",
    "a\x00b",
    "a\nb",
    "esc\x1b[31m",
    "del\x7f",
    "x" * 256,
    "a/" * 2100 + "a",
    TEMP_PREFIX + "abc",
    "sub/" + TEMP_PREFIX + "abc",
    "../root2/secret",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_names_are_refused_everywhere(storage: Storage, name: str) -> None:
    with pytest.raises(PathRefused):
        split_name(name)
    operations: list[Callable[[], object]] = [
        lambda: storage.open_read(name),
        lambda: storage.begin_write(name, size=1, mtime_ns=-1, exclusive=False),
        lambda: storage.remove(name),
        lambda: storage.mkdir(name, parents=True),
        lambda: storage.move(name, "new"),
        lambda: storage.move("old.txt", name),
    ]
    for operation in operations:
        with pytest.raises(PathRefused):
            operation()


def test_good_names_split_into_components() -> None:
    assert split_name("a/b c/ü.txt") == ("a", "b c", "ü.txt")
    assert split_name("...") == ("...",)
    assert split_name("x" * 255) == ("x" * 255,)
    assert split_name("", allow_root=True) == ()


def test_absolute_name_does_not_drop_the_root(storage: Storage, root: Path) -> None:
    with pytest.raises(PathRefused, match="absolute"):
        storage.open_read(str(root / "old.txt"))


@pytest.fixture
def links(root: Path, tmp_path: Path) -> Path:
    os.symlink(tmp_path / "outside.txt", root / "out_file")
    os.symlink(tmp_path, root / "out_dir")
    os.symlink("old.txt", root / "in_file")
    os.symlink("sub", root / "in_dir")
    return root


@pytest.mark.parametrize("name", ["out_file", "in_file"])
def test_symlinked_files_are_refused_for_read_and_write(
    storage: Storage, links: Path, tmp_path: Path, name: str
) -> None:
    with pytest.raises(NotRegularFile, match="symlink"):
        storage.open_read(name)
    with pytest.raises(NotRegularFile, match="symlink"):
        storage.begin_write(name, size=3, mtime_ns=-1, exclusive=False)
    assert (tmp_path / "outside.txt").read_bytes() == b"outside"
    assert os.path.islink(links / name)


@pytest.mark.parametrize("directory", ["out_dir", "in_dir"])
def test_symlinked_directories_are_never_traversed(
    storage: Storage, links: Path, tmp_path: Path, directory: str
) -> None:
    target = "outside.txt" if directory == "out_dir" else "inner.txt"
    name = f"{directory}/{target}"
    attempts: list[Callable[[], object]] = [
        lambda: storage.open_read(name),
        lambda: storage.begin_write(f"{directory}/new", size=1, mtime_ns=-1, exclusive=False),
        lambda: list(storage.list_dir(directory)),
        lambda: storage.remove(name),
        lambda: storage.mkdir(f"{directory}/made", parents=True),
        lambda: storage.move(name, "stolen"),
        lambda: storage.move("old.txt", f"{directory}/planted"),
    ]
    for attempt in attempts:
        with pytest.raises(NotRegularFile, match="symlink"):
            attempt()
    assert (tmp_path / "outside.txt").read_bytes() == b"outside"
    assert sorted(os.listdir(tmp_path)) == ["outside.txt", "root", "root2"]


def test_listing_shows_symlinks_as_symlinks(storage: Storage, links: Path) -> None:
    kinds = {e.name: e.kind for e in storage.list_dir("")}
    assert kinds["out_dir"] is EntryKind.SYMLINK and kinds["sub"] is EntryKind.DIRECTORY


@pytest.mark.timeout(10)
def test_fifo_socket_and_device_are_refused_without_blocking(storage: Storage, root: Path) -> None:
    os.mkfifo(root / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    specials = ["fifo", "sock"]
    if os.geteuid() == 0:
        os.mknod(root / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        specials.append("null")
    try:
        for name in specials:
            with pytest.raises(NotRegularFile, match="not a regular file"):
                storage.open_read(name)
            entry, handle = storage.stat(name)
            assert entry.kind is EntryKind.OTHER and handle is None
    finally:
        sock.close()


def test_directories_are_not_files(storage: Storage) -> None:
    with pytest.raises(IsADirectory):
        storage.open_read("sub")
    with pytest.raises(IsADirectory):
        storage.begin_write("sub", size=1, mtime_ns=-1, exclusive=False)
    with pytest.raises(NotADirectory):
        storage.open_read("old.txt/x")
    with pytest.raises(NotFound):
        storage.open_read("missing")


def test_atomic_write_replaces_and_preserves_mtime(storage: Storage, root: Path) -> None:
    data = os.urandom(100_000)
    with storage.begin_write("old.txt", size=len(data), mtime_ns=10**18, exclusive=False) as w:
        w.write(data[:10])
        w.write(memoryview(data)[10:])
        assert (root / "old.txt").read_bytes() == b"old content"  # not visible yet
        assert w.commit(digest_bytes(data)) == digest_bytes(data)
    assert (root / "old.txt").read_bytes() == data
    assert os.stat(root / "old.txt").st_mtime_ns == 10**18
    assert temporaries(root) == []


def test_digest_mismatch_commits_nothing(storage: Storage, root: Path) -> None:
    with (
        pytest.raises(IntegrityError, match="mismatch"),
        storage.begin_write("old.txt", size=3, mtime_ns=-1, exclusive=False) as w,
    ):
        w.write(b"new")
        w.commit(digest_bytes(b"NEW"))
    assert (root / "old.txt").read_bytes() == b"old content"
    assert temporaries(root) == []


def test_short_or_long_upload_commits_nothing(storage: Storage, root: Path) -> None:
    with (
        pytest.raises(IntegrityError, match="got 2 of 3"),
        storage.begin_write("old.txt", size=3, mtime_ns=-1, exclusive=False) as w,
    ):
        w.write(b"ne")
        w.commit(digest_bytes(b"ne"))
    with (
        pytest.raises(IntegrityError, match="more bytes"),
        storage.begin_write("old.txt", size=3, mtime_ns=-1, exclusive=False) as w,
    ):
        w.write(b"news")
    assert (root / "old.txt").read_bytes() == b"old content"
    assert temporaries(root) == []


def _failing(err: int) -> Callable[..., object]:
    def fail(*args: object, **kwargs: object) -> object:
        raise OSError(err, os.strerror(err))

    return fail


@pytest.mark.parametrize(
    ("syscall", "err", "expected"),
    [
        ("write", errno.ENOSPC, NoSpace),
        ("write", errno.EFBIG, TooLarge),
        ("write", errno.EIO, StorageIOError),
        ("fsync", errno.EIO, StorageIOError),
        ("fsync", errno.ENOSPC, NoSpace),
        ("rename", errno.EIO, StorageIOError),
        ("utime", errno.EIO, StorageIOError),
    ],
)
def test_storage_faults_keep_the_old_version_and_remove_the_temp(
    storage: Storage,
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    syscall: str,
    err: int,
    expected: type[FtransferError],
) -> None:
    data = b"replacement"
    with storage.begin_write("old.txt", size=len(data), mtime_ns=5, exclusive=False) as w:
        monkeypatch.setattr(os, syscall, _failing(err))
        with pytest.raises(expected):
            w.write(data)
            w.commit(digest_bytes(data))
        monkeypatch.undo()
    assert (root / "old.txt").read_bytes() == b"old content"
    assert temporaries(root) == []
    assert put(storage, "old.txt", data) == digest_bytes(data)  # the next request is served


def test_crash_between_write_and_rename(root: Path) -> None:
    """A process killed before commit leaves the old file; the temp is hidden and swept."""
    script = f"""
import os
from pathlib import Path
from ftransfer.storage import Storage
s = Storage(Path({str(root)!r}), max_file_bytes=1 << 30)
w = s.begin_write("old.txt", size=8, mtime_ns=-1, exclusive=False)
w.write(b"new data")
os._exit(9)
"""
    result = subprocess.run([sys.executable, "-c", script], check=False)
    assert result.returncode == 9
    assert (root / "old.txt").read_bytes() == b"old content"
    leftovers = temporaries(root)
    assert len(leftovers) == 1
    restarted = Storage(root, max_file_bytes=1 << 30)
    assert leftovers[0] not in {e.name for e in restarted.list_dir("")}
    with pytest.raises(PathRefused, match="reserved"):
        restarted.open_read(leftovers[0])
    assert restarted.sweep_temporaries() == 1
    assert temporaries(root) == []
    restarted.close()


def test_a_reader_keeps_the_old_version_across_a_replacement(storage: Storage) -> None:
    handle = storage.open_read("old.txt")
    put(storage, "old.txt", b"brand new content")
    assert os.pread(handle.fd, 100, 0) == b"old content"
    handle.close()
    fresh = storage.open_read("old.txt")
    assert os.pread(fresh.fd, 100, 0) == b"brand new content"
    fresh.close()


def test_exclusive_write_is_atomic_against_a_racing_writer(storage: Storage, root: Path) -> None:
    with pytest.raises(Exists):
        storage.begin_write("old.txt", size=1, mtime_ns=-1, exclusive=True)
    first = storage.begin_write("race", size=1, mtime_ns=-1, exclusive=True)
    second = storage.begin_write("race", size=1, mtime_ns=-1, exclusive=True)
    first.write(b"1")
    second.write(b"2")
    first.commit(digest_bytes(b"1"))
    with pytest.raises(Exists):
        second.commit(digest_bytes(b"2"))
    assert (root / "race").read_bytes() == b"1"
    assert temporaries(root) == []


def test_limits_are_checked_before_any_byte(root: Path) -> None:
    small = Storage(root, max_file_bytes=10)
    with pytest.raises(TooLarge):
        small.begin_write("big", size=11, mtime_ns=-1, exclusive=False)
    huge = Storage(root, max_file_bytes=1 << 62)
    with pytest.raises(NoSpace):
        huge.begin_write("big", size=1 << 61, mtime_ns=-1, exclusive=False)
    assert temporaries(root) == []
    small.close()
    huge.close()


def test_read_only_refuses_every_change(root: Path) -> None:
    ro = Storage(root, read_only=True, max_file_bytes=1 << 30)
    changes: list[Callable[[], object]] = [
        lambda: ro.begin_write("new", size=1, mtime_ns=-1, exclusive=False),
        lambda: ro.remove("old.txt"),
        lambda: ro.mkdir("d", parents=False),
        lambda: ro.move("old.txt", "moved"),
    ]
    for change in changes:
        with pytest.raises(ReadOnly):
            change()
    handle = ro.open_read("old.txt")
    assert os.read(handle.fd, 100) == b"old content"
    handle.close()
    ro.close()


def test_listing_hides_temporaries_and_reports_kinds(storage: Storage, root: Path) -> None:
    (root / (TEMP_PREFIX + "leftover")).write_bytes(b"partial")
    entries = {e.name: e for e in storage.list_dir("")}
    assert set(entries) == {"old.txt", "sub"}
    assert entries["old.txt"].size == len(b"old content")
    assert entries["sub"].kind is EntryKind.DIRECTORY
    assert [e.name for e in storage.list_dir("sub")] == ["inner.txt"]


def test_mkdir_remove_move(storage: Storage, root: Path) -> None:
    storage.mkdir("a/b/c", parents=True)
    storage.mkdir("a/b/c", parents=True)  # exists: fine with parents
    with pytest.raises(Exists):
        storage.mkdir("a", parents=False)
    with pytest.raises(NotFound):
        storage.mkdir("x/y", parents=False)
    with pytest.raises(DirectoryNotEmpty):
        storage.remove("a")
    storage.move("old.txt", "a/b")  # into a directory keeps the name
    assert (root / "a" / "b" / "old.txt").read_bytes() == b"old content"
    storage.move("a/b/old.txt", "renamed.txt")
    assert (root / "renamed.txt").exists()
    with pytest.raises(NotFound):
        storage.move("missing", "x")
    with pytest.raises(PathRefused):
        storage.move("a", "a/b/c")  # a directory into itself
    storage.remove("renamed.txt")
    storage.remove("a/b/c")
    assert not (root / "a" / "b" / "c").exists()


def test_block_reader_serves_any_offset_like_pread(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(READ_AHEAD_BYTES * 2 + 777)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        read = BlockReader(fd)
        offsets = [0, 1400, 2800, READ_AHEAD_BYTES - 100, 7, READ_AHEAD_BYTES * 2 + 700]
        offsets += random.Random(4).sample(range(len(data)), 50)  # retransmissions
        for offset in offsets:
            assert bytes(read(offset, 1400)) == data[offset : offset + 1400]
    finally:
        os.close(fd)
