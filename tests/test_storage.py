"""Stores: containment, atomic commits under faults, and one semantics for both.

The tests marked ``both`` run against LocalStore (a directory, jailed with openat)
and MemoryStore (the simulator's): what the server's operations rely on is the
same whichever store is behind them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import subprocess
import sys
import threading
import time
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
    InvalidMove,
    IsADirectory,
    NoSpace,
    NotADirectory,
    NotFound,
    NotRegularFile,
    StorageIOError,
    TooLarge,
)
from ftransfer.storage.atomic import UNPARSED_STALE_S
from ftransfer.storage.base import Store, Writer
from ftransfer.storage.entry import EntryKind
from ftransfer.storage.local import LocalStore
from ftransfer.storage.memory import MemoryStore
from ftransfer.storage.names import Name, parse_name
from ftransfer.storage.s3 import S3Store

LIMIT = 1 << 30


def n(text: str) -> Name:
    return parse_name(text, allow_root=True)


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
def local(root: Path) -> Iterator[LocalStore]:
    store = LocalStore(root)
    yield store
    store.close()


@pytest.fixture(params=["local", "memory", "s3"])
def store(request: pytest.FixtureRequest, root: Path) -> Iterator[Store]:
    """Every store, holding old.txt and sub/inner.txt (s3: a fresh bucket on the
    run's SeaweedFS)."""
    if request.param == "local":
        local_store = LocalStore(root)
        yield local_store
        local_store.close()
        return
    if request.param == "s3":
        bucket_store = request.getfixturevalue("s3_store")
        put(bucket_store, "old.txt", b"old content")
        bucket_store.mkdir(n("sub"), parents=False)
        put(bucket_store, "sub/inner.txt", b"inner")
        yield bucket_store
        return
    memory = MemoryStore()
    memory.put_file("old.txt", b"old content")
    memory.put_file("sub/inner.txt", b"inner")
    yield memory


def put(
    store: Store, name: str, data: bytes, *, exclusive: bool = False, mode: int | None = None
) -> bytes:
    writer = store.open_write(
        n(name), size=len(data), mtime_ns=-1, mode=mode, exclusive=exclusive, limit=LIMIT
    )
    try:
        writer.write(data)
        return writer.commit(digest_bytes(data))
    finally:
        writer.abort()


def read(store: Store, name: str) -> bytes:
    readable = store.open_read(n(name))
    try:
        return readable.read(0, readable.size + 1)
    finally:
        readable.close()


def temporaries(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.startswith(TEMP_PREFIX)]


# ---- one semantics for both stores -------------------------------------------------------


def test_both_stores_write_atomically_and_read_back(store: Store) -> None:
    data = os.urandom(10_000)
    writer = store.open_write(
        n("old.txt"), size=len(data), mtime_ns=10**18, mode=0o640, exclusive=False, limit=LIMIT
    )
    writer.write(data[:10])
    writer.write(memoryview(data)[10:])
    assert read(store, "old.txt") == b"old content"  # not visible before the commit
    assert writer.commit(digest_bytes(data)) == digest_bytes(data)
    assert read(store, "old.txt") == data
    entry = store.stat(n("old.txt"))
    assert (entry.kind, entry.size, entry.mtime_ns) == (EntryKind.FILE, len(data), 10**18)
    assert entry.mode & 0o700 == 0o600 and store.digest(n("old.txt")) == digest_bytes(data)


def test_both_stores_commit_nothing_on_a_bad_digest_or_size(store: Store) -> None:
    writer = store.open_write(
        n("old.txt"), size=3, mtime_ns=-1, mode=None, exclusive=False, limit=LIMIT
    )
    writer.write(b"new")
    with pytest.raises(IntegrityError, match="mismatch"):
        writer.commit(digest_bytes(b"NEW"))
    short = store.open_write(
        n("old.txt"), size=3, mtime_ns=-1, mode=None, exclusive=False, limit=LIMIT
    )
    short.write(b"ne")
    with pytest.raises(IntegrityError, match="got 2 of 3"):
        short.commit(digest_bytes(b"ne"))
    long = store.open_write(
        n("old.txt"), size=3, mtime_ns=-1, mode=None, exclusive=False, limit=LIMIT
    )
    with pytest.raises(IntegrityError, match="more bytes"):
        long.write(b"news")
    unsized = store.open_write(
        n("new"), size=None, mtime_ns=-1, mode=None, exclusive=False, limit=4
    )
    with pytest.raises(TooLarge, match="limit"):
        unsized.write(b"12345")
    assert read(store, "old.txt") == b"old content"
    with pytest.raises(NotFound):
        store.stat(n("new"))


def test_both_stores_refuse_what_is_not_a_file(store: Store) -> None:
    with pytest.raises(IsADirectory):
        store.open_read(n("sub"))
    with pytest.raises(IsADirectory):
        store.open_write(n("sub"), size=1, mtime_ns=-1, mode=None, exclusive=False, limit=LIMIT)
    with pytest.raises(NotADirectory):
        store.open_read(n("old.txt/x"))
    with pytest.raises(NotADirectory):
        store.open_read(n("old.txt/"))  # a trailing slash says "directory"
    with pytest.raises(NotFound):
        store.open_read(n("missing"))


@pytest.mark.parametrize(
    ("text", "error"),
    [("old.txt/", NotADirectory), ("sub/", IsADirectory), ("missing/", NotFound)],
)
def test_a_trailing_slash_is_refused_for_what_is_there(
    store: Store, text: str, error: type[Exception]
) -> None:
    """GET and PUT of ``x/`` (protocol.md section 7): 12 when x is a file, 18 when it
    is a directory, 10 when there is nothing; the same for reading and writing."""
    with pytest.raises(error):
        store.open_read(n(text))
    with pytest.raises(error):
        store.open_write(n(text), size=1, mtime_ns=-1, mode=None, exclusive=False, limit=LIMIT)


def test_both_stores_exclusive_writes_fail_atomically(store: Store) -> None:
    with pytest.raises(Exists):
        store.open_write(n("old.txt"), size=1, mtime_ns=-1, mode=None, exclusive=True, limit=LIMIT)
    first = store.open_write(n("race"), size=1, mtime_ns=-1, mode=None, exclusive=True, limit=LIMIT)
    second = store.open_write(
        n("race"), size=1, mtime_ns=-1, mode=None, exclusive=True, limit=LIMIT
    )
    first.write(b"1")
    second.write(b"2")
    first.commit(digest_bytes(b"1"))
    with pytest.raises(Exists):
        second.commit(digest_bytes(b"2"))
    assert read(store, "race") == b"1"


def test_both_stores_mkdir_remove_move(store: Store) -> None:
    store.mkdir(n("a/b/c"), parents=True)
    store.mkdir(n("a/b/c"), parents=True)  # exists: fine with parents
    with pytest.raises(Exists):
        store.mkdir(n("a"), parents=False)
    with pytest.raises(NotFound):
        store.mkdir(n("x/y"), parents=False)
    with pytest.raises(DirectoryNotEmpty):
        store.remove(n("a"))
    assert store.move(n("old.txt"), n("a/b"), exclusive=False) == n("a/b/old.txt")
    assert read(store, "a/b/old.txt") == b"old content"
    store.move(n("a/b/old.txt"), n("renamed.txt"), exclusive=False)
    with pytest.raises(NotFound):
        store.move(n("missing"), n("x"), exclusive=False)
    with pytest.raises(InvalidMove, match="into itself"):
        store.move(n("a"), n("a/b/c"), exclusive=False)
    with pytest.raises(NotADirectory):
        store.move(n("renamed.txt"), n("nowhere/"), exclusive=False)
    store.remove(n("renamed.txt"))
    store.remove(n("a/b/c/"))
    assert {e.name for e in store.list(n("a/b"))} == set()


def test_both_stores_move_no_clobber_and_never_over_a_directory(store: Store) -> None:
    put(store, "other", b"other")
    with pytest.raises(Exists):
        store.move(n("old.txt"), n("other"), exclusive=True)
    store.mkdir(n("d/old.txt"), parents=True)
    with pytest.raises(IsADirectory):
        store.move(n("old.txt"), n("d"), exclusive=False)  # d/old.txt is a directory
    store.move(n("old.txt"), n("other"), exclusive=False)  # replaces a file
    assert read(store, "other") == b"old content"


@pytest.mark.parametrize("target", ["a", "a/", "a/b", "a/b/", "a/b/c", "a/new", "a/b/c/d/e"])
def test_both_stores_refuse_to_move_a_directory_into_itself(store: Store, target: str) -> None:
    store.mkdir(n("a/b"), parents=True)
    put(store, "a/b/f", b"kept")
    with pytest.raises(InvalidMove, match="into itself") as refused:
        store.move(n("a"), n(target), exclusive=False)
    assert refused.value.code == 19  # its own code, not 13 (a refused name)
    assert read(store, "a/b/f") == b"kept"
    assert {e.name for e in store.list(n("a"))} == {"b"}


def test_both_stores_list_names_and_kinds(store: Store) -> None:
    entries = {e.name: e for e in store.list(n(""))}
    assert set(entries) == {"old.txt", "sub"}
    assert entries["old.txt"].size == len(b"old content")
    assert entries["sub"].kind is EntryKind.DIRECTORY
    assert [e.name for e in store.list(n("sub/"))] == ["inner.txt"]
    assert store.stat(n("")).kind is EntryKind.DIRECTORY


def test_a_reader_keeps_the_old_version_across_a_replacement(store: Store) -> None:
    """On disk and in memory a reader keeps the version it opened; a bucket
    without versioning cannot, so its reader fails, saying why, and never mixes
    the two versions."""
    readable = store.open_read(n("old.txt"))
    put(store, "old.txt", b"brand new content")
    if isinstance(store, S3Store):
        with pytest.raises(StorageIOError, match="replaced while it was being read"):
            readable.read(0, 100)
    else:
        assert readable.read(0, 100) == b"old content"
    readable.close()
    assert read(store, "old.txt") == b"brand new content"


# ---- the local store's jail -------------------------------------------------------------


def test_absolute_names_cannot_be_made(local: LocalStore, root: Path) -> None:
    with pytest.raises(FtransferError):
        local.open_read(parse_name(str(root / "old.txt")))


@pytest.fixture
def links(root: Path, tmp_path: Path) -> Path:
    os.symlink(tmp_path / "outside.txt", root / "out_file")
    os.symlink(tmp_path, root / "out_dir")
    os.symlink("old.txt", root / "in_file")
    os.symlink("sub", root / "in_dir")
    return root


@pytest.mark.parametrize("name", ["out_file", "in_file"])
def test_symlinked_files_are_refused_for_read_and_write(
    local: LocalStore, links: Path, tmp_path: Path, name: str
) -> None:
    with pytest.raises(NotRegularFile, match="symlink"):
        local.open_read(n(name))
    with pytest.raises(NotRegularFile, match="symlink"):
        local.open_write(n(name), size=3, mtime_ns=-1, mode=None, exclusive=False, limit=LIMIT)
    assert (tmp_path / "outside.txt").read_bytes() == b"outside"
    assert os.path.islink(links / name)


def test_moves_never_replace_a_symlink(local: LocalStore, links: Path, tmp_path: Path) -> None:
    os.symlink("nowhere", links / "dangling")
    for name in ("out_file", "in_file", "out_dir", "in_dir", "dangling"):
        for source in ("sub/inner.txt", "old.txt"):
            with pytest.raises(NotRegularFile, match="symlinks are not replaced") as moving:
                local.move(n(source), n(name), exclusive=False)
            with pytest.raises(NotRegularFile, match="symlinks") as putting:
                local.open_write(
                    n(name), size=1, mtime_ns=-1, mode=None, exclusive=False, limit=LIMIT
                )
            assert moving.value.code == putting.value.code == 16  # refused alike
        assert os.path.islink(links / name)
    local.mkdir(n("d"), parents=False)
    with pytest.raises(NotRegularFile, match="symlinks are not replaced"):
        local.move(n("d"), n("in_file"), exclusive=False)  # a directory onto one, too
    assert (tmp_path / "outside.txt").read_bytes() == b"outside"
    assert (links / "sub" / "inner.txt").read_bytes() == b"inner"
    assert sorted(os.listdir(links / "sub")) == ["inner.txt"]  # nothing moved into in_dir


def test_the_memory_store_never_replaces_a_special_entry_by_a_move() -> None:
    memory = MemoryStore()
    memory.put_file("f", b"f")
    memory.add_special(n("link"))
    memory.add_special(n("fifo"), EntryKind.OTHER)
    for name, reason in [("link", "symlinks are not replaced"), ("fifo", "not a regular file")]:
        with pytest.raises(NotRegularFile, match=reason):
            memory.move(n("f"), n(name), exclusive=False)
    assert memory.files() == {"f": b"f"}


@pytest.mark.parametrize("directory", ["out_dir", "in_dir"])
def test_symlinked_directories_are_never_traversed(
    local: LocalStore, links: Path, tmp_path: Path, directory: str
) -> None:
    target = "outside.txt" if directory == "out_dir" else "inner.txt"
    name = f"{directory}/{target}"
    attempts: list[Callable[[], object]] = [
        lambda: local.open_read(n(name)),
        lambda: local.open_write(
            n(f"{directory}/new"), size=1, mtime_ns=-1, mode=None, exclusive=False, limit=LIMIT
        ),
        lambda: list(local.list(n(directory))),
        lambda: local.remove(n(name)),
        lambda: local.mkdir(n(f"{directory}/made"), parents=True),
        lambda: local.move(n(name), n("stolen"), exclusive=False),
        lambda: local.move(n("old.txt"), n(f"{directory}/planted"), exclusive=False),
    ]
    for attempt in attempts:
        with pytest.raises(NotRegularFile, match="symlink"):
            attempt()
    assert (tmp_path / "outside.txt").read_bytes() == b"outside"
    assert sorted(os.listdir(tmp_path)) == ["outside.txt", "root", "root2"]


def test_listing_shows_symlinks_as_symlinks(local: LocalStore, links: Path) -> None:
    kinds = {e.name: e.kind for e in local.list(n(""))}
    assert kinds["out_dir"] is EntryKind.SYMLINK and kinds["sub"] is EntryKind.DIRECTORY


@pytest.mark.timeout(10)
def test_fifo_socket_and_device_are_refused_without_blocking(local: LocalStore, root: Path) -> None:
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
                local.open_read(n(name))
            assert local.stat(n(name)).kind is EntryKind.OTHER
            with pytest.raises(NotRegularFile):
                local.open_write(
                    n(name), size=1, mtime_ns=-1, mode=None, exclusive=False, limit=LIMIT
                )
    finally:
        sock.close()


def test_listing_leaves_out_what_no_request_could_name(local: LocalStore, root: Path) -> None:
    (root / (TEMP_PREFIX + "leftover")).write_bytes(b"partial")
    (root / "back\\slash").write_bytes(b"x")
    (root / "ctrl\x01").write_bytes(b"x")
    (root / "csi\x9b31m").write_bytes(b"x")
    (root / "evil\u202etxt.exe").write_bytes(b"x")
    os.close(os.open(os.fsencode(root) + b"/bad\xffname", os.O_CREAT | os.O_WRONLY, 0o644))
    assert {e.name for e in local.list(n(""))} == {"old.txt", "sub"}


def test_modes_pass_through_the_umask(local: LocalStore, root: Path) -> None:
    put(local, "run.sh", b"#!/bin/sh\n", mode=0o750)
    assert stat.S_IMODE(os.stat(root / "run.sh").st_mode) == 0o750 & ~local.umask
    put(local, "plain", b"x")  # no mode: as created
    assert stat.S_IMODE(os.stat(root / "plain").st_mode) == 0o666 & ~local.umask
    assert local.stat(n("run.sh")).mode == 0o750 & ~local.umask


def test_a_time_before_1970_is_kept(local: LocalStore, root: Path) -> None:
    writer = local.open_write(
        n("old"), size=1, mtime_ns=-2_000_000_000, mode=None, exclusive=False, limit=LIMIT
    )
    writer.write(b"x")
    writer.commit(digest_bytes(b"x"))
    assert os.stat(root / "old").st_mtime_ns == -2_000_000_000


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
    local: LocalStore,
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    syscall: str,
    err: int,
    expected: type[FtransferError],
) -> None:
    data = b"replacement"
    writer = local.open_write(
        n("old.txt"), size=len(data), mtime_ns=5, mode=None, exclusive=False, limit=LIMIT
    )
    monkeypatch.setattr(os, syscall, _failing(err))
    with pytest.raises(expected):
        writer.write(data)
        writer.commit(digest_bytes(data))
    monkeypatch.undo()
    writer.abort()
    assert (root / "old.txt").read_bytes() == b"old content"
    assert temporaries(root) == []
    assert put(local, "old.txt", data) == digest_bytes(data)  # the next request is served


def test_no_space_is_refused_before_any_byte(local: LocalStore, root: Path) -> None:
    with pytest.raises(NoSpace):
        local.open_write(
            n("big"), size=1 << 61, mtime_ns=-1, mode=None, exclusive=False, limit=1 << 62
        )
    assert temporaries(root) == []


def test_crash_between_write_and_rename(root: Path) -> None:
    """A process killed before commit leaves the old file; its temporary is hidden,
    refused as a name, and swept because its writer is gone."""
    script = f"""
import os
from ftransfer.storage.local import LocalStore
from ftransfer.storage.names import parse_name
s = LocalStore({str(root)!r})
w = s.open_write(parse_name("old.txt"), size=8, mtime_ns=-1, mode=None, exclusive=False, limit=100)
w.write(b"new data")
os._exit(9)
"""
    result = subprocess.run([sys.executable, "-c", script], check=False)
    assert result.returncode == 9
    assert (root / "old.txt").read_bytes() == b"old content"
    [leftover] = temporaries(root)
    restarted = LocalStore(root)
    assert leftover not in {e.name for e in restarted.list(n(""))}
    assert restarted.sweep_temporaries() == 1
    assert temporaries(root) == []
    restarted.close()


def test_a_live_writers_temporary_survives_a_sweep(local: LocalStore, root: Path) -> None:
    writer = local.open_write(
        n("sub/busy"), size=4, mtime_ns=-1, mode=None, exclusive=False, limit=LIMIT
    )
    writer.write(b"half")
    other = LocalStore(root)  # a second server on the same root (scale-out)
    assert other.sweep_temporaries() == 0
    assert len(temporaries(root / "sub")) == 1
    with pytest.raises(DirectoryNotEmpty, match="upload into it is running"):
        local.remove(n("sub/inner.txt"))
        local.remove(n("sub"))
    writer.abort()
    other.close()


def _age(path: Path, seconds: float) -> None:
    when = time.time() - seconds
    os.utime(path, (when, when))


def test_a_directory_holding_only_dead_temporaries_can_be_removed(
    local: LocalStore, root: Path
) -> None:
    (root / "sub" / "inner.txt").unlink()
    placed = root / "sub" / (TEMP_PREFIX + "placed-by-hand")
    placed.write_bytes(b"x")
    _age(placed, UNPARSED_STALE_S + 3600)
    local.remove(n("sub"))
    assert not (root / "sub").exists()


def test_a_temporary_of_another_shape_is_swept_only_once_it_is_old(root: Path) -> None:
    """0.1 named its temporaries TEMP_PREFIX + 16 hex: one an old process is still
    writing during an upgrade must survive; a forgotten one goes after a day."""
    live = root / (TEMP_PREFIX + "0123456789abcdef")
    live.write_bytes(b"being written by ftransfer 0.1")
    forgotten = root / "sub" / (TEMP_PREFIX + "fedcba9876543210")
    forgotten.write_bytes(b"left by a 0.1 process that died")
    _age(forgotten, UNPARSED_STALE_S + 3600)
    store = LocalStore(root)
    try:
        assert store.sweep_temporaries() == 1
    finally:
        store.close()
    assert live.read_bytes() == b"being written by ftransfer 0.1"
    assert not forgotten.exists()


def test_the_digest_of_a_committed_file_is_remembered(
    local: LocalStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(4096)
    put(local, "f", data)
    readable = local.open_read(n("f"))
    assert readable.digest == digest_bytes(data)  # no need to read the file to know it
    readable.close()
    with open(root / "f", "r+b") as changed:  # changed behind the store's back
        changed.write(b"X")
    readable = local.open_read(n("f"))
    assert readable.digest is None
    readable.close()
    assert local.digest(n("f")) == digest_bytes(b"X" + data[1:])


# ---- an abort from another thread during a commit ------------------------------------

DEADLINE_S = 30.0
"""A safety net only: every wait below ends as soon as the other thread gets there."""


class _WatchedLock:
    """A writer's lock that says when a second caller has to wait for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.contended = threading.Event()

    def __enter__(self) -> None:
        if not self._lock.acquire(blocking=False):
            self.contended.set()
            self._lock.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _fds_into(directory: Path) -> list[int]:
    """This process's descriptors of ``directory`` and of temporaries in it."""
    found = []
    for fd in _open_fds():
        with contextlib.suppress(OSError):  # (the listing's own descriptor, closed)
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target == str(directory) or target.startswith(str(directory / TEMP_PREFIX)):
                found.append(int(fd))
    return sorted(found)


def _abort_while_committing(
    writer: Writer, digest: bytes, inside: threading.Event, release: threading.Event
) -> tuple[dict[str, object], bool]:
    """Commit in one thread; once ``inside`` says the commit is held inside, abort in
    a second thread, and ``release`` the commit once that abort waits for the lock.
    Returns what each call returned or raised, and whether the abort waited."""
    lock = _WatchedLock()
    vars(writer)["_lock"] = lock
    outcome: dict[str, object] = {}

    def run(what: str, call: Callable[[], object]) -> None:
        try:
            outcome[what] = call()
        except BaseException as exc:
            outcome[what] = exc

    committer = threading.Thread(target=run, args=("commit", lambda: writer.commit(digest)))
    aborter = threading.Thread(target=run, args=("abort", writer.abort))
    committer.start()
    try:
        assert inside.wait(DEADLINE_S)
        aborter.start()
        waited = lock.contended.wait(DEADLINE_S)
    finally:
        release.set()
    committer.join(DEADLINE_S)
    aborter.join(DEADLINE_S)
    return outcome, waited


@pytest.mark.parametrize("held_at", [1, 2], ids=["file-fsync", "directory-fsync"])
def test_an_abort_during_a_commit_waits_and_leaves_the_file_committed(
    local: LocalStore, root: Path, monkeypatch: pytest.MonkeyPatch, held_at: int
) -> None:
    """The server commits a large UDP upload in a worker thread while a CLOSE, the
    give-up timer or a shutdown aborts it on the event loop. Held inside the
    commit (before the rename: the file's fsync; after it: the directory's), the
    abort must wait, then do nothing: the file committed whole, the temporary gone,
    each descriptor closed exactly once, no exception from either call."""
    data = os.urandom(64 * 1024)
    before = _open_fds()
    writer = local.open_write(
        n("sub/new"), size=len(data), mtime_ns=-1, mode=None, exclusive=False, limit=LIMIT
    )
    owned = _fds_into(root / "sub")  # the temporary and its directory
    writer.write(data)
    inside, release = threading.Event(), threading.Event()
    fsyncs: list[int] = []
    closed: list[int] = []
    real_fsync, real_close = os.fsync, os.close

    def held_fsync(fd: int) -> None:
        fsyncs.append(fd)
        if len(fsyncs) == held_at:
            inside.set()
            release.wait(DEADLINE_S)
        real_fsync(fd)

    def counted_close(fd: int) -> None:
        closed.append(fd)
        real_close(fd)

    monkeypatch.setattr(os, "fsync", held_fsync)
    monkeypatch.setattr(os, "close", counted_close)
    outcome, waited = _abort_while_committing(writer, digest_bytes(data), inside, release)
    monkeypatch.undo()
    assert outcome == {"commit": digest_bytes(data), "abort": None}
    assert writer.committed
    assert (root / "sub" / "new").read_bytes() == data
    assert temporaries(root / "sub") == []
    assert len(owned) == 2 and sorted(fd for fd in closed if fd in owned) == owned
    assert _open_fds() == before
    assert waited, "the abort did not wait for the commit"


class _HeldStore(MemoryStore):
    """A MemoryStore whose commits stop inside, just before the bytes are placed."""

    def __init__(self) -> None:
        super().__init__()
        self.inside, self.release = threading.Event(), threading.Event()

    def place(
        self, name: Name, data: bytearray, mtime_ns: int, mode: int | None, exclusive: bool
    ) -> None:
        self.inside.set()
        self.release.wait(DEADLINE_S)
        super().place(name, data, mtime_ns, mode, exclusive)


def test_an_abort_during_a_memory_commit_waits_for_it() -> None:
    store = _HeldStore()
    data = b"committed whole"
    writer = store.open_write(
        n("f"), size=len(data), mtime_ns=-1, mode=None, exclusive=False, limit=LIMIT
    )
    writer.write(data)
    outcome, waited = _abort_while_committing(
        writer, digest_bytes(data), store.inside, store.release
    )
    assert outcome == {"commit": digest_bytes(data), "abort": None}
    assert writer.committed and store.files() == {"f": data}
    assert store.root.uploads == 0  # the upload ended once
    assert waited, "the abort did not wait for the commit"
