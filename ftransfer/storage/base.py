"""The Store port: what the server's operations need from a place that keeps files.

Theory of operation
-------------------
The upper layer (server/operations.py) speaks to storage only through the three
protocols below, in the manner of httpcore's network backends: a small port with a
real implementation (``LocalStore``, a directory jailed with openat), one for tests
and the simulator (``MemoryStore``), and later an object store. Nothing above this
port sees a file descriptor, a path string joined onto a root, or an object key.

- ``Store``: names in, entries and handles out. Every name arrives as a checked
  ``Name`` (names.py); a store adds what only it can know: whether the name exists,
  is a directory, a symlink, a FIFO; free space; atomic replacement.
- ``Readable``: an open file, with the size, mtime and permission bits it had when
  opened and, when the store already knows it, its ``digest`` (checksum.py) (a store may
  remember the digest of what it committed or hashed, keyed by the file's identity,
  so a download or a STAT need not read the file twice). ``read(offset, n)`` reads
  at an offset; ``fileno()``, where a store has one, is the zero-copy fast path
  (sendfile) and is optional: callers test for it with ``zero_copy_fd``.
- ``Writer``: an upload that appears whole at its final name on ``commit`` (after
  the size and digest are checked and the bytes are durable) or not at all; it
  hashes what passes through ``write``. Its calls are serialised, so ``commit``
  may run in a worker thread while ``abort`` comes from the event loop.

Every method raises only the ftransfer error tree (errors.py), already mapped from
whatever the backend raised.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NoReturn, Protocol

from ..errors import IsADirectory
from .entry import Entry, EntryKind
from .names import Name
from .partial import Probe, Resume

__all__ = [
    "Entry",
    "EntryKind",
    "Probe",
    "Readable",
    "Resume",
    "Store",
    "Writer",
    "refuse_directory_name",
    "zero_copy_fd",
]


class Readable(Protocol):
    """An open file for reading."""

    @property
    def size(self) -> int: ...

    @property
    def mtime_ns(self) -> int: ...

    @property
    def mode(self) -> int: ...

    @property
    def digest(self) -> bytes | None:
        """The xxh3-128 of the whole file if the store knows it already."""
        ...

    def read(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset``; fewer only at the end of the file."""
        ...

    def remember_digest(self, digest: bytes) -> None:
        """The caller hashed the whole file as it read it: keep it if the store can."""
        ...

    def chunk_digests(self, count: int) -> list[bytes]:
        """The digests of the first ``count`` whole chunks (checksum.py): remembered
        from a commit or an earlier read, else read and hashed now."""
        ...

    def remember_chunks(self, chunks: list[bytes]) -> None:
        """A reader hashed these whole chunks from the start: keep them, if the file
        is unchanged since it was opened."""
        ...

    def close(self) -> None: ...


class Writer(Protocol):
    """An atomic upload in progress.

    ``write``, ``commit`` and ``abort`` may be called from different threads (a
    large commit runs in a worker thread while a CLOSE, a give-up timer or a
    shutdown aborts on the event loop); they are serialised. An ``abort`` that
    arrives during a ``commit`` waits for it to end; if the commit succeeded, the
    abort only closes (the file stays committed, whole), and if it failed, nothing
    was committed. Either way every resource is released exactly once and
    ``abort`` raises nothing that the commit raised."""

    @property
    def written(self) -> int: ...

    @property
    def committed(self) -> bool:
        """The upload is at its final name (``commit`` succeeded); an ``abort``
        after that changes nothing."""
        ...

    @property
    def digest(self) -> bytes:
        """xxh3-128 of the bytes written so far."""
        ...

    @property
    def chunks(self) -> list[bytes]:
        """The digests of the whole chunks written so far, from the file's start
        (a resumed write: its journal's, then the new ones)."""
        ...

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes; more than the declared size (or the limit) is refused."""
        ...

    def commit(self, expected_digest: bytes) -> bytes:
        """Check size and digest, make durable, publish; returns the digest."""
        ...

    def abort(self) -> None:
        """Discard the upload; safe to call more than once, from any thread, and
        after (or during: it waits) a commit, which it then leaves in place."""
        ...


class Store(Protocol):
    """A tree of directories and files that names resolve in."""

    def open_read(self, name: Name) -> Readable:
        """Open a regular file (never a symlink, FIFO or device)."""
        ...

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
    ) -> Writer:
        """Start an upload. ``size`` is exact when known (else ``limit`` bounds it);
        ``mtime_ns`` -1 keeps the store's clock; ``mode`` None is the default
        permissions; ``exclusive`` refuses to replace (checked again at commit).
        ``resume``: the upload is resumable (a store that cannot keep partials
        writes it as any other, and refuses an offset with ResumeRefused)."""
        ...

    def partial(self, name: Name, *, size: int, mtime_ns: int, resume: Resume) -> Probe:
        """How much of this resumable upload the store holds (nothing: offset 0)."""
        ...

    def stat(self, name: Name) -> Entry:
        """What ``name`` is (the root for an empty name); symlinks are not followed."""
        ...

    def digest(self, name: Name) -> bytes:
        """The xxh3-128 of a regular file (from memory if the store knows it)."""
        ...

    def list(self, name: Name) -> Iterator[Entry]:
        """A directory's entries, in no particular order, leaving out temporary
        files and names no request could use (names.is_valid_component)."""
        ...

    def remove(self, name: Name) -> None:
        """Remove a file, a symlink (not its target) or an empty directory."""
        ...

    def mkdir(self, name: Name, *, parents: bool) -> None:
        """Create a directory; ``parents``: missing parents too, existing is fine."""
        ...

    def move(self, source: Name, target: Name, *, exclusive: bool) -> Name:
        """Rename ``source`` to ``target``, or into it if ``target`` is a directory;
        returns where it went. Never replaces a directory or a symlink; with
        ``exclusive`` never replaces anything."""
        ...

    def sweep_temporaries(self) -> int:
        """Remove temporary files whose writer is no longer alive; returns how many."""
        ...

    def scoped(self, name: Name) -> Store:
        """A store whose root is the directory ``name`` (made, with its parents, if
        missing): a user's root. Nothing above it can be named through it, and its
        messages name paths as seen from it. Closing it leaves this store open."""
        ...

    def close(self) -> None: ...


def zero_copy_fd(readable: Readable) -> int | None:
    """The descriptor for sendfile if the readable has one (an optional capability)."""
    fileno = getattr(readable, "fileno", None)
    return fileno() if callable(fileno) else None


def refuse_directory_name(store: Store, name: Name) -> NoReturn:
    """A file cannot be read or written at a name with a trailing ``/`` (one that
    names a directory): say what is there. Not found and not a directory come from
    ``stat`` (a file, or a symlink, followed by ``/``); a directory is one."""
    store.stat(name)
    raise IsADirectory(f"{name}: is a directory")
