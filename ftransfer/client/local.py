"""The client's side of the disk: files it sends, and where received bytes go.

Theory of operation
-------------------
- ``LocalFile``: a regular file opened for an upload, with its size, mtime and
  permission bits as opened, read with pread and sent with sendfile (``fileno``).
- Sinks take a download's bytes as they arrive, hash them, and accept them only if
  the sender's xxh3-128 matches on ``commit``:
  ``FileSink`` writes atomically beside the target (storage/atomic.py: temporary
  name, verify, fsync, rename; with no-clobber a hard link that fails if the name
  exists), with the server's mtime and permission bits under this process's umask;
  before it starts it removes the temporaries that killed clients (SIGKILL, a
  power cut) left in that directory, which their names let it tell from live ones,
  and at exit this process removes any of its own that a signal orphaned.
  ``StreamSink`` writes to a descriptor (standard output) as bytes arrive, which
  cannot be atomic; a reader that went away (``| head``) ends it with
  ``OutputClosed``, which the CLI turns into a quiet exit. ``MemorySink`` keeps a
  small answer (a UDP listing) until it is verified.

Every error names the local file as local (``local a.bin: ...``), so it is never
taken for the server's. Nothing here needs the server's openat jail, so this
module works where O_DIRECTORY or O_NOFOLLOW do not exist.
"""

from __future__ import annotations

import errno
import os
import stat

from ..checksum import new_hasher
from ..config import PARTIAL_TTL_S
from ..errors import (
    Exists,
    FtransferError,
    IntegrityError,
    IsADirectory,
    NotRegularFile,
    StorageIOError,
)
from ..storage.atomic import (
    AtomicWriter,
    Directory,
    current_umask,
    os_error,
    own_prefix,
    sweep,
    write_all,
)
from ..storage.names import shown
from ..storage.partial import PartialBusy, PartialWriter, Resume, sweep_partials

_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)


class OutputClosed(FtransferError):
    """The reader of our output went away (a closed pipe): stop quietly."""

    code = 0


def local_label(path: str) -> str:
    return f"local {shown(path)}"


class LocalFile:
    """A local regular file, open for reading."""

    def __init__(self, path: str) -> None:
        self.path = path
        label = local_label(path)
        try:
            self._fd = os.open(path, _READ_FLAGS)
        except OSError as exc:  # EMFILE too: an error for this file, not a traceback
            raise os_error(exc, label) from None
        try:
            st = os.fstat(self._fd)
        except OSError as exc:
            os.close(self._fd)
            raise os_error(exc, label) from None
        if not stat.S_ISREG(st.st_mode):
            os.close(self._fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectory(f"{label}: is a directory (-r uploads directories)")
            raise NotRegularFile(f"{label}: not a regular file")
        self.size, self.mtime_ns, self.mode = st.st_size, st.st_mtime_ns, st.st_mode & 0o777
        self.device, self.inode, self.ctime_ns = st.st_dev, st.st_ino, st.st_ctime_ns
        self.digest: bytes | None = None

    def fileno(self) -> int:
        return self._fd

    def read(self, offset: int, n: int) -> bytes:
        try:
            return os.pread(self._fd, n, offset)
        except OSError as exc:
            raise os_error(exc, local_label(self.path)) from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> LocalFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_SINK_DIRECTORIES: set[str] = set()
"""Where this process has made download temporaries (see ``discard_own_temporaries``)."""


def discard_own_temporaries() -> int:
    """Remove this process's own download temporaries that are still there: run at
    exit. A sink removes its temporary when it ends, but a signal (Ctrl-C, SIGTERM)
    that lands between the temporary's creation and its sink reaching the caller
    leaves one that nothing holds; the directory was registered before the
    temporary was made, and the name says whose it is."""
    prefix, removed = own_prefix(), 0
    for directory in _SINK_DIRECTORIES:
        try:
            names = [n for n in os.listdir(directory or ".") if n.startswith(prefix)]
        except OSError:
            continue
        for name in names:
            try:
                os.unlink(os.path.join(directory, name))
                removed += 1
            except OSError:
                pass
    return removed


def _register(directory: str) -> bool:
    """Note a directory that will hold our temporaries; whether it is new to us."""
    if not _SINK_DIRECTORIES:
        import atexit

        atexit.register(discard_own_temporaries)
    path = os.path.abspath(directory or ".")
    if path in _SINK_DIRECTORIES:
        return False
    _SINK_DIRECTORIES.add(path)
    return True


_UMASK: list[int] = []
"""This process's umask, read once (a read of /proc costs more than a small file)."""


def _umask() -> int:
    if not _UMASK:
        _UMASK.append(current_umask())
    return _UMASK[0]


class FileSink:
    """A download written atomically to a local path."""

    def __init__(
        self,
        target: str,
        *,
        size: int | None,
        mtime_ns: int,
        mode: int | None,
        exclusive: bool,
        resume: Resume | None = None,
    ) -> None:
        """``resume``: write a partial that survives an interruption
        (storage/partial.py), maybe the rest of one (client/resume.py)."""
        self.target = target
        label = local_label(target)
        parent, leaf = os.path.split(target)
        first = _register(parent)
        directory = Directory(parent)
        try:
            if first:  # what killed clients left here (once per directory: get -r)
                sweep(directory)
                sweep_partials(directory, PARTIAL_TTL_S)  # (and what nobody resumed)
        except OSError as exc:
            directory.close()
            raise os_error(exc, local_label(parent or ".")) from None
        if exclusive and os.path.lexists(target):
            raise Exists(f"{label}: exists, not replaced (no-clobber)")
        if os.path.isdir(target):
            raise IsADirectory(f"{label}: is a directory")
        final_mode = None if mode is None else mode & ~_umask()
        self._writer: AtomicWriter
        if resume is not None and size is not None:
            try:
                self._writer = PartialWriter(
                    directory, leaf, resume=resume, ttl_s=PARTIAL_TTL_S, size=size,
                    mtime_ns=mtime_ns, mode=final_mode, exclusive=exclusive, fsync=True,
                    label=label,
                )  # fmt: skip
                return
            except PartialBusy:
                if resume.offset:
                    raise StorageIOError(f"{label}: another download is writing it") from None
                directory = Directory(parent)  # (closed by the failed writer)
        self._writer = AtomicWriter(
            directory,
            leaf,
            size=size,
            mtime_ns=mtime_ns,
            mode=final_mode,
            exclusive=exclusive,
            fsync=True,
            label=label,
        )

    @property
    def resumed_from(self) -> int:
        writer = self._writer
        return writer.resumed_from if isinstance(writer, PartialWriter) else 0

    @property
    def digest(self) -> bytes:
        return self._writer.digest

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._writer.write(data)

    def commit(self, expected: bytes) -> bytes:
        return self._writer.commit(expected)

    def abort(self) -> None:
        self._writer.abort()


class _HashingSink:
    """The digest and the check that StreamSink and MemorySink share."""

    what = "data received"

    def __init__(self) -> None:
        self._hasher = new_hasher()

    @property
    def digest(self) -> bytes:
        return self._hasher.digest()

    def commit(self, expected: bytes) -> bytes:
        if self.digest != expected:
            raise IntegrityError(f"digest mismatch: the {self.what} is corrupt")
        return self.digest

    def abort(self) -> None:
        """Nothing to undo: the bytes were not going to a file of ours."""


class StreamSink(_HashingSink):
    """A download to a descriptor (``-``: standard output), as bytes arrive."""

    what = "output written"

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            write_all(self._fd, data)
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise OutputClosed("the reader closed the output") from None
            raise StorageIOError(f"standard output: {exc.strerror}") from None
        self._hasher.update(data)


class MemorySink(_HashingSink):
    """A small answer (a listing, a STAT over UDP) kept in memory until verified."""

    what = "answer received"

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data
        self._hasher.update(data)


Sink = FileSink | StreamSink | MemorySink
