"""``MemoryStore``: the Store port over a tree in memory, for tests and the simulator.

Theory of operation
-------------------
The same semantics as ``LocalStore`` without a file system: directories hold
files, directories and *special* entries (a stand-in for symlinks, FIFOs and
devices, which are listed but never read, replaced or followed). An upload is
private to its writer until ``commit`` checks the size and digest and puts the
bytes in place in one step, so a reader sees the old bytes or the new ones; an
``exclusive`` commit fails if the name appeared meanwhile. A writer's ``write``,
``commit`` and ``abort`` hold one lock, as ``AtomicWriter``'s do (base.Writer):
an abort from another thread during a commit waits for it. Running uploads make
their directory non-empty, as a temporary file would. A ``Readable`` is a snapshot
of the bytes at open time (as an open descriptor keeps an unlinked inode). There
is no ``fileno``: callers take the portable path, which is what the simulator
and the object-store backend need tested.

``fail_writes`` injects a storage error into every later write or commit, for tests
of the failure paths.
"""

from __future__ import annotations

import _thread
import time
from collections.abc import Callable, Iterator

from ..checksum import CHUNK_BYTES, TreeHasher, digest_bytes, new_hasher, prefix_digest
from ..errors import (
    DirectoryNotEmpty,
    Exists,
    FtransferError,
    IntegrityError,
    InvalidMove,
    IsADirectory,
    NotADirectory,
    NotFound,
    NotRegularFile,
    ResumeRefused,
    StorageIOError,
    TooLarge,
)
from .base import Probe, Resume, refuse_directory_name
from .entry import Entry, EntryKind
from .names import Name
from .partial import partial_leaf


class _File:
    def __init__(self, data: bytes, mtime_ns: int, mode: int) -> None:
        self.data, self.mtime_ns, self.mode = data, mtime_ns, mode


class _Dir:
    def __init__(self, mtime_ns: int) -> None:
        self.children: dict[str, _Node] = {}
        self.mtime_ns = mtime_ns
        self.uploads = 0


class _Special:
    def __init__(self, kind: EntryKind, mtime_ns: int) -> None:
        self.kind, self.mtime_ns = kind, mtime_ns


_Node = _File | _Dir | _Special


class MemoryReadable:
    """A snapshot of a file's bytes (no descriptor: the portable path)."""

    def __init__(self, node: _File) -> None:
        self._data = node.data
        self.size, self.mtime_ns, self.mode = len(node.data), node.mtime_ns, node.mode
        self.digest: bytes | None = None

    def read(self, offset: int, n: int) -> bytes:
        return self._data[offset : offset + n]

    def remember_digest(self, digest: bytes) -> None:
        """Nothing to remember: the digest of bytes in memory is cheap."""

    def chunk_digests(self, count: int) -> list[bytes]:
        hasher = TreeHasher()
        hasher.update(self._data[: count * CHUNK_BYTES])
        return hasher.chunks[:count]

    def remember_chunks(self, chunks: list[bytes]) -> None:
        """Nothing to remember (as for digests)."""

    def close(self) -> None:
        self._data = b""


class MemoryWriter:
    """An upload kept apart until commit."""

    def __init__(
        self,
        store: MemoryStore,
        name: Name,
        *,
        size: int | None,
        mtime_ns: int,
        mode: int | None,
        exclusive: bool,
        limit: int,
        partial: _Partial | None = None,
    ) -> None:
        """``partial``: a resumable upload, written into (and kept in) it."""
        self._store, self._name, self._size = store, name, size
        self._bound = size if size is not None else limit
        self._mtime_ns, self._mode, self._exclusive = mtime_ns, mode, exclusive
        self._partial = partial
        self._buffer = bytearray()
        self._hasher = new_hasher()
        if partial is not None:
            partial.held = True
            self._buffer = partial.data
            self._hasher = TreeHasher(chunks=partial.chunks, on_chunk=partial.journal)
        self._lock = _thread.allocate_lock()
        self._done = False
        self.committed = False
        self._parent = store.directory(name.parent)
        self._parent.uploads += 1

    @property
    def written(self) -> int:
        return len(self._buffer)

    @property
    def digest(self) -> bytes:
        return self._hasher.digest()

    @property
    def chunks(self) -> list[bytes]:
        return self._hasher.chunks

    def write(self, data: bytes | bytearray | memoryview) -> None:
        with self._lock:
            self._check_open()
            self._store.check_fault()
            if self._bound is not None and len(self._buffer) + len(data) > self._bound:
                self._drop_partial()  # (more than declared: not resumable, as on disk)
                self._end()
                if self._size is None:
                    raise TooLarge(f"{self._name}: more than the limit of {self._bound} bytes")
                raise IntegrityError(f"{self._name}: more bytes than the declared {self._size}")
            self._buffer += data
            self._hasher.update(data)

    def commit(self, expected_digest: bytes) -> bytes:
        name = self._name
        with self._lock:
            digest = self._hasher.digest()
            try:
                self._check_open()
                self._store.check_fault()
                if self._size is not None and len(self._buffer) != self._size:
                    raise IntegrityError(f"{name}: got {len(self._buffer)} of {self._size} bytes")
                if digest != expected_digest:
                    raise IntegrityError(f"{name}: digest mismatch, not committed")
                self._store.place(name, self._buffer, self._mtime_ns, self._mode, self._exclusive)
                self.committed = True
            finally:
                self._drop_partial()  # committed or refused: it has no future
                self._end()
        return digest

    def _drop_partial(self) -> None:
        if self._partial is not None:
            self._store.partials.pop(self._partial.key, None)

    def abort(self) -> None:
        """Discard the upload; during a commit, wait for it (then only end)."""
        with self._lock:
            self._end()

    def _check_open(self) -> None:
        if self._done:
            raise StorageIOError(f"{self._name}: the upload has already ended")

    def _end(self) -> None:
        if not self._done:
            self._done = True
            self._parent.uploads -= 1
            if self._partial is not None:
                self._partial.held = False
                self._partial.touched_ns = self._store.now_ns()


class _Partial:
    """A resumable upload kept in memory: its bytes, its chunk digests (what a
    journal holds, partial.py) and what binds it."""

    def __init__(self, key: str, size: int, mtime_ns: int, transfer_id: bytes, now_ns: int) -> None:
        self.key, self.size, self.mtime_ns, self.transfer_id = key, size, mtime_ns, transfer_id
        self.data = bytearray()
        self.chunks: list[bytes] = []
        self.held = False
        self.touched_ns = now_ns

    def journal(self, index: int, digest: bytes) -> None:
        """A whole chunk is in ``data``: record its digest (partial.py's journal)."""
        del self.chunks[index:]
        self.chunks.append(digest)

    def usable(self, size: int, mtime_ns: int, resume: Resume) -> list[bytes]:
        if (size, mtime_ns, resume.transfer_id) != (self.size, self.mtime_ns, self.transfer_id):
            return []
        if not self.chunks or self.chunks[0] != resume.first_digest:
            return []
        return self.chunks[: size // CHUNK_BYTES]


class MemoryStore:
    """A tree of directories and files in memory."""

    def __init__(self, *, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._clock_ns = clock_ns
        self.root = _Dir(clock_ns())
        self.fault: FtransferError | None = None
        self.partials: dict[str, _Partial] = {}
        """Resumable uploads kept after an interruption, by binding."""

    def now_ns(self) -> int:
        return self._clock_ns()

    def scoped(self, name: Name) -> MemoryStore:
        """See ``Store.scoped``: a view of the same tree from ``name`` down."""
        self.mkdir(name, parents=True)
        view = MemoryStore(clock_ns=self._clock_ns)
        view.root = self.directory(name)
        view.partials = self.partials  # (bound to the user and the name: no clash)
        return view

    # ---- for tests -------------------------------------------------------------------

    def fail_writes(self, error: FtransferError | None) -> None:
        """Make every later write and commit raise ``error`` (None: stop)."""
        self.fault = error

    def check_fault(self) -> None:
        if self.fault is not None:
            raise self.fault

    def add_special(self, name: Name, kind: EntryKind = EntryKind.SYMLINK) -> None:
        """Put a symlink (or FIFO, device: OTHER) at ``name``."""
        self.directory(name.parent).children[name.leaf] = _Special(kind, self._clock_ns())

    def files(self) -> dict[str, bytes]:
        """Every file, by its full name."""
        out: dict[str, bytes] = {}

        def walk(node: _Dir, prefix: str) -> None:
            for leaf, child in node.children.items():
                if isinstance(child, _File):
                    out[prefix + leaf] = child.data
                elif isinstance(child, _Dir):
                    walk(child, f"{prefix}{leaf}/")

        walk(self.root, "")
        return out

    def put_file(self, name: str, data: bytes, *, mode: int = 0o644) -> None:
        """Store ``data`` at ``name`` directly, parents made as needed."""
        parts = tuple(name.split("/"))
        node = self.root
        for part in parts[:-1]:
            child = node.children.setdefault(part, _Dir(self._clock_ns()))
            assert isinstance(child, _Dir)
            node = child
        node.children[parts[-1]] = _File(bytes(data), self._clock_ns(), mode)

    # ---- resolution -----------------------------------------------------------------

    def _lookup(self, name: Name) -> _Node:
        node: _Node = self.root
        for index, part in enumerate(name.parts):
            if isinstance(node, _Special):
                raise NotRegularFile(f"{name}: symlinks are not followed")
            if not isinstance(node, _Dir):
                raise NotADirectory(f"{name}: a component is not a directory")
            child = node.children.get(part)
            if child is None:
                raise NotFound(f"{name}: no such file or directory")
            if isinstance(child, _Special) and index < len(name.parts) - 1:
                raise NotRegularFile(f"{name}: symlinks are not followed")
            node = child
        return node

    def directory(self, name: Name) -> _Dir:
        node = self._lookup(name)
        if isinstance(node, _Special):
            raise NotRegularFile(f"{name}: symlinks are not followed")
        if not isinstance(node, _Dir):
            raise NotADirectory(f"{name}: not a directory")
        return node

    def _entry(self, leaf: str, node: _Node) -> Entry:
        if isinstance(node, _File):
            return Entry(
                name=leaf,
                kind=EntryKind.FILE,
                size=len(node.data),
                mtime_ns=node.mtime_ns,
                mode=node.mode,
            )
        if isinstance(node, _Dir):
            return Entry(name=leaf, kind=EntryKind.DIRECTORY, size=0, mtime_ns=node.mtime_ns)
        return Entry(name=leaf, kind=node.kind, size=0, mtime_ns=node.mtime_ns)

    # ---- the Store port -------------------------------------------------------------

    def open_read(self, name: Name) -> MemoryReadable:
        if name.directory:
            refuse_directory_name(self, name)
        node = self._lookup(name)
        if isinstance(node, _Dir):
            raise IsADirectory(f"{name}: is a directory")
        if isinstance(node, _Special):
            raise NotRegularFile(f"{name}: not a regular file")
        return MemoryReadable(node)

    def open_write(
        self,
        name: Name,
        *,
        size: int | None,
        mtime_ns: int,
        mode: int | None,
        exclusive: bool,
        limit: int,
        resume: Resume | None = None,
    ) -> MemoryWriter:
        """Partials as LocalStore keeps them (partial.py), in memory: for tests
        and the simulator."""
        if not name.parts:
            raise IsADirectory(f"{name}: is a directory")
        if name.directory:
            refuse_directory_name(self, name)
        self._check_target(self.directory(name.parent).children.get(name.leaf), name, exclusive)
        partial = None
        if resume is not None and size is not None and size > CHUNK_BYTES:
            partial = self._partial_for(name, size, mtime_ns, resume)
        elif resume is not None and resume.offset:
            raise ResumeRefused(f"{name}: a file of one chunk is not resumed")
        return MemoryWriter(
            self,
            name,
            size=size,
            mtime_ns=mtime_ns,
            mode=mode,
            exclusive=exclusive,
            limit=limit,
            partial=partial,
        )

    def _partial_for(self, name: Name, size: int, mtime_ns: int, resume: Resume) -> _Partial | None:
        key = partial_leaf(resume.binding)
        old = self.partials.get(key)
        if resume.offset:
            chunks = [] if old is None or old.held else old.usable(size, mtime_ns, resume)
            if resume.offset % CHUNK_BYTES or len(chunks) * CHUNK_BYTES < resume.offset:
                raise ResumeRefused(f"{name}: no partial to resume from {resume.offset}")
            assert old is not None
            del old.data[resume.offset :]
            del old.chunks[resume.offset // CHUNK_BYTES :]
            return old
        if old is not None and old.held:
            return None  # (a second writer of the same name now: an ordinary upload)
        fresh = _Partial(key, size, mtime_ns, resume.transfer_id, self.now_ns())
        self.partials[key] = fresh
        return fresh

    def partial(self, name: Name, *, size: int, mtime_ns: int, resume: Resume) -> Probe:
        old = self.partials.get(partial_leaf(resume.binding))
        chunks = [] if old is None else old.usable(size, mtime_ns, resume)
        return Probe(offset=len(chunks) * CHUNK_BYTES, prefix=prefix_digest(chunks))

    @staticmethod
    def _check_target(node: _Node | None, name: Name, exclusive: bool) -> None:
        if node is None:
            return
        if isinstance(node, _Dir):
            raise IsADirectory(f"{name}: is a directory")
        if isinstance(node, _Special):
            raise NotRegularFile(f"{name}: not a regular file, not replaced")
        if exclusive:
            raise Exists(f"{name}: exists")

    def place(
        self, name: Name, data: bytearray, mtime_ns: int, mode: int | None, exclusive: bool
    ) -> None:
        """Commit an upload (MemoryWriter): the whole file appears at once."""
        parent = self.directory(name.parent)
        self._check_target(parent.children.get(name.leaf), name, exclusive)
        when = self._clock_ns() if mtime_ns == -1 else mtime_ns
        parent.children[name.leaf] = _File(bytes(data), when, 0o644 if mode is None else mode)

    def stat(self, name: Name) -> Entry:
        node = self._lookup(name)
        if name.directory and not isinstance(node, _Dir):
            raise NotADirectory(f"{name}: not a directory")
        return self._entry(name.text, node)

    def digest(self, name: Name) -> bytes:
        readable = self.open_read(name)
        return digest_bytes(readable.read(0, readable.size))

    def list(self, name: Name) -> Iterator[Entry]:
        directory = self.directory(name)
        for leaf, node in list(directory.children.items()):
            yield self._entry(leaf, node)

    def remove(self, name: Name) -> None:
        if not name.parts:
            raise DirectoryNotEmpty("/: the root is not removed")
        parent = self.directory(name.parent)
        node = self._lookup(name)
        if isinstance(node, _Dir):
            if node.children or node.uploads:
                raise DirectoryNotEmpty(f"{name}: directory not empty")
        elif name.directory:
            raise NotADirectory(f"{name}: not a directory")
        del parent.children[name.leaf]

    def mkdir(self, name: Name, *, parents: bool) -> None:
        if not name.parts:
            if parents:
                return
            raise Exists("/: exists")
        node = self.root
        for index, part in enumerate(name.parts):
            child = node.children.get(part)
            last = index == len(name.parts) - 1
            if child is None:
                if not (parents or last):
                    raise NotFound(f"{name}: no such directory")
                child = node.children[part] = _Dir(self._clock_ns())
            elif last and not parents:
                raise Exists(f"{name}: exists")
            if isinstance(child, _Special):
                raise NotRegularFile(f"{name}: symlinks are not followed")
            if not isinstance(child, _Dir):
                raise (Exists if last else NotADirectory)(f"{name}: not a directory")
            node = child

    def move(self, source: Name, target: Name, *, exclusive: bool) -> Name:
        if not source.parts:
            raise InvalidMove("/: the root cannot be moved")
        node = self._lookup(source)
        if source.directory and not isinstance(node, _Dir):
            raise NotADirectory(f"{source}: not a directory")
        final = target
        try:
            found = self._lookup(target)
        except NotFound:
            if target.directory:
                raise NotADirectory(f"{target}: no such directory") from None
            found = None
        if isinstance(found, _Dir):
            final = Name(parts=(*target.parts, source.leaf))
        elif target.directory:
            raise NotADirectory(f"{target}: not a directory")
        if isinstance(node, _Dir) and final.is_within(source):
            raise InvalidMove(f"{source}: cannot move a directory into itself")
        if final.parts == source.parts:
            return final
        parent = self.directory(final.parent)
        existing = parent.children.get(final.leaf)
        if existing is not None:
            if exclusive:
                raise Exists(f"{final}: exists")
            if isinstance(existing, _Special):
                what = (
                    "symlinks are" if existing.kind is EntryKind.SYMLINK else "not a regular file,"
                )
                raise NotRegularFile(f"{final}: {what} not replaced")
            if isinstance(existing, _Dir):
                raise IsADirectory(f"{final}: is a directory, not replaced")
            if isinstance(node, _Dir):
                raise NotADirectory(f"{final}: a directory cannot replace a file")
        del self.directory(source.parent).children[source.leaf]
        parent.children[final.leaf] = node
        return final

    def sweep_temporaries(self) -> int:
        """Nothing is left behind: uploads live in their writers."""
        return 0

    def close(self) -> None:
        """Nothing to release."""
