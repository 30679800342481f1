"""Atomic writes: a file appears whole at its final name, or not at all.

Theory of operation
-------------------
``AtomicWriter`` writes to a fresh temporary name in the target directory
(``O_EXCL``), hashes the bytes as they pass, and on ``commit`` checks the size and
the digest (checksum.py), sets the mtime and permission bits, fsyncs the file, renames it over
the final name (or hard-links it, which fails atomically if the name exists, for
no-clobber) and fsyncs the directory. Every failure, and ``abort``, removes the
temporary, so the final name holds its complete old content or the complete new
content, never a mix. A failed fsync is a failure (nothing is reported committed).
One lock serialises ``write``, ``commit`` and ``abort``, which may come from
different threads: an abort that arrives during a commit waits for it, then only
closes if it succeeded; the descriptors are closed exactly once.

The directory is reached through ``Directory``: a descriptor-relative one for the
server's jail (local.py: every syscall relative to a directory descriptor opened
with O_NOFOLLOW) and a path-based one for the client's downloads, which go where
the local user said and need no jail (and must work where ``dir_fd`` does not).

*Temporary names say who owns them*, so that a temporary left by a killed process
(SIGKILL, a crash, a power cut) can be told from one being written right now, by
this or any other process, and removed safely by whoever comes next::

    .ftransfer-tmp-<machine 8 hex><boot 8 hex>-<pid>-<process start>-<random 8 hex>

A temporary is *stale* when it was made on this machine and its process is gone:
made in an earlier boot, or no process has its pid, or that pid now belongs to a
process that started at another time (pid reuse). One made on another machine
(a shared file system) is stale only once it is older than FOREIGN_STALE_S. A
name with the prefix but not this shape says nothing about its writer: it may be
placed by hand, or be the live temporary of an older ftransfer (0.1 named them
``.ftransfer-tmp-<16 hex>``) running during an upgrade, so it is stale only once
it is older than UNPARSED_STALE_S, like a foreign one. ``sweep`` removes the
stale temporaries of a directory.
"""

from __future__ import annotations

import _thread
import errno
import os
import stat
import time

from ..checksum import new_hasher
from ..config import TEMP_PREFIX
from ..errors import (
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
    PermissionDenied,
    ReadOnly,
    Refused,
    StorageIOError,
    TooLarge,
)
from .names import shown

FOREIGN_STALE_S = 24 * 3600.0
"""A temporary made on another machine sharing the directory is removed once it
is older than this (no upload runs a day without writing)."""
UNPARSED_STALE_S = FOREIGN_STALE_S
"""A temporary whose name does not say its owner (another version's, or placed by
hand) is removed once it is older than this, for the same reason."""
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_RW_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)

_ERRNO_ERRORS: dict[int, type[FtransferError]] = {
    errno.ENOENT: NotFound,
    errno.EEXIST: Exists,
    errno.ENOTDIR: NotADirectory,
    errno.EISDIR: IsADirectory,
    errno.EACCES: PermissionDenied,
    errno.EPERM: PermissionDenied,
    errno.ELOOP: NotRegularFile,
    errno.ENOSPC: NoSpace,
    errno.EDQUOT: NoSpace,
    errno.EFBIG: TooLarge,
    errno.ENOTEMPTY: DirectoryNotEmpty,
    errno.EROFS: ReadOnly,
    errno.ENAMETOOLONG: PathRefused,
    errno.EXDEV: Refused,
    errno.EINVAL: Refused,
}


def os_error(exc: OSError, name: str) -> FtransferError:
    """The ftransfer error for an OSError met while handling ``name`` (already fit
    to show: see names.shown)."""
    cls = _ERRNO_ERRORS.get(exc.errno or 0, StorageIOError)
    reason = "symlinks are not followed" if exc.errno == errno.ELOOP else exc.strerror
    return cls(f"{name}: {reason}")


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """os.write until every byte is written (a write may be partial)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# ---- who owns a temporary ----------------------------------------------------------


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            return file.read().strip()
    except OSError:
        return ""


def _short_hash(text: str) -> str:
    from ..checksum import digest_bytes

    return digest_bytes(text.encode()).hex()[:8]


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, from Linux's /proc), or
    None if there is no such process. Without /proc any live process reads 0, so
    only pid reuse goes unseen there."""
    if os.path.exists("/proc/self/stat"):
        fields = _read_text(f"/proc/{pid}/stat").rpartition(")")[2].split()
        return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:
        pass  # it exists but is not ours to signal
    return 0


class _Owner:
    """This process as a temporary's owner (computed once, on first use)."""

    def __init__(self) -> None:
        machine = _read_text("/etc/machine-id") or _read_text("/var/lib/dbus/machine-id")
        boot = _read_text("/proc/sys/kernel/random/boot_id")
        self.machine = _short_hash(machine or os.uname().nodename)
        self.boot = _short_hash(boot) if boot else "00000000"
        self.pid = os.getpid()
        self.start = _start_ticks(self.pid) or 0

    @property
    def tag(self) -> str:
        return f"{self.machine}{self.boot}-{self.pid}-{self.start}"


_owner: _Owner | None = None


def _me() -> _Owner:
    global _owner
    if _owner is None or _owner.pid != os.getpid():  # recompute after a fork
        _owner = _Owner()
    return _owner


def own_prefix() -> str:
    """What every temporary name this process makes starts with."""
    return f"{TEMP_PREFIX}{_me().tag}-"


def temp_name() -> str:
    """A fresh temporary name owned by this process."""
    return f"{own_prefix()}{os.urandom(4).hex()}"


def is_stale(name: str, mtime_s: float, now_s: float) -> bool:
    """Whether temporary ``name`` (modified at ``mtime_s``) has no live writer."""
    fields = name.removeprefix(TEMP_PREFIX).split("-")
    if len(fields) != 4 or len(fields[0]) != 16 or not (fields[1] + fields[2]).isdigit():
        return now_s - mtime_s > UNPARSED_STALE_S  # its owner is unknown: by age
    me = _me()
    machine, boot = fields[0][:8], fields[0][8:]
    if machine != me.machine:
        return now_s - mtime_s > FOREIGN_STALE_S
    if boot != me.boot:
        return True  # made before this machine last started
    return _start_ticks(int(fields[1])) != int(fields[2])


# ---- the directory a writer publishes into -------------------------------------------


class Directory:
    """A directory reached by a path (the client's side; see FdDirectory)."""

    def __init__(self, path: str) -> None:
        self.path = path or "."

    def _at(self, leaf: str) -> str:
        return os.path.join(self.path, leaf)

    def open_temp(self, leaf: str) -> int:
        return os.open(self._at(leaf), _TEMP_FLAGS, 0o666)

    def open_rw(self, leaf: str, extra: int = 0, *, create: bool = True) -> int:
        """Open (or create) ``leaf`` for reading and writing, never through a link."""
        flags = _RW_FLAGS if create else _RW_FLAGS & ~os.O_CREAT
        return os.open(self._at(leaf), flags | extra, 0o600)

    def lstat(self, leaf: str) -> os.stat_result:
        return os.lstat(self._at(leaf))

    def replace(self, src: str, dst: str) -> None:
        os.replace(self._at(src), self._at(dst))

    def link(self, src: str, dst: str) -> None:
        os.link(self._at(src), self._at(dst), follow_symlinks=False)

    def unlink(self, leaf: str) -> None:
        os.unlink(self._at(leaf))

    def names(self) -> list[str]:
        return os.listdir(self.path)

    def sync(self) -> None:
        if os.name == "posix":
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def close(self) -> None:
        """Nothing is held open."""


class FdDirectory(Directory):
    """A directory held by a descriptor: every call is relative to it (the jail)."""

    def __init__(self, fd: int) -> None:
        super().__init__("")
        self.fd = fd

    def open_temp(self, leaf: str) -> int:
        return os.open(leaf, _TEMP_FLAGS | os.O_NOFOLLOW, 0o666, dir_fd=self.fd)

    def open_rw(self, leaf: str, extra: int = 0, *, create: bool = True) -> int:
        flags = _RW_FLAGS if create else _RW_FLAGS & ~os.O_CREAT
        return os.open(leaf, flags | extra, 0o600, dir_fd=self.fd)

    def lstat(self, leaf: str) -> os.stat_result:
        return os.stat(leaf, dir_fd=self.fd, follow_symlinks=False)

    def replace(self, src: str, dst: str) -> None:
        os.rename(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def link(self, src: str, dst: str) -> None:
        os.link(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd, follow_symlinks=False)

    def unlink(self, leaf: str) -> None:
        os.unlink(leaf, dir_fd=self.fd)

    def names(self) -> list[str]:
        return os.listdir(self.fd)

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


def sweep(directory: Directory) -> int:
    """Remove the stale temporaries in ``directory``; returns how many."""
    removed = 0
    now = time.time()
    for leaf in directory.names():
        if not leaf.startswith(TEMP_PREFIX):
            continue
        try:  # (not contextlib.suppress: every command imports this module)
            st = directory.lstat(leaf)
            if stat.S_ISREG(st.st_mode) and is_stale(leaf, st.st_mtime, now):
                directory.unlink(leaf)
                removed += 1
        except OSError:
            continue  # gone already, or not ours to remove
    return removed


# ---- the writer ----------------------------------------------------------------------


class AtomicWriter:
    """A file that appears whole at its final name on ``commit``, or not at all.

    The writer owns ``directory`` and closes it when it ends. ``write``, ``commit``
    and ``abort`` hold one lock (see base.Writer): an ``abort`` from another thread
    while a commit runs (the server commits large uploads in a worker thread while
    a CLOSE, a timer or a shutdown aborts on the event loop) waits for the commit
    to end and then only closes, so the temporary is never removed under a rename
    and each descriptor is closed exactly once."""

    def __init__(
        self,
        directory: Directory,
        leaf: str,
        *,
        size: int | None,
        mtime_ns: int,
        mode: int | None,
        exclusive: bool,
        fsync: bool,
        limit: int | None = None,
        label: str | None = None,
    ) -> None:
        """``size`` is the declared size, or None when the sender cannot tell it in
        advance (TFTP without tsize); then ``limit`` bounds what may be written.
        ``mode`` is the final permission bits (None: as created, 0o666 & ~umask).
        ``label`` names the file in error messages (default: its leaf name)."""
        self._dir, self._leaf, self._size = directory, leaf, size
        self._label = label if label is not None else shown(leaf)
        self._bound = size if size is not None else limit
        self._mtime_ns, self._mode = mtime_ns, mode
        self._exclusive, self._fsync = exclusive, fsync
        self._hasher = new_hasher()
        self._written = 0
        self._lock = _thread.allocate_lock()
        self._ended = False  # no more writes or commits
        self._temp_gone = False  # published, or removed
        self.committed = False
        """The file is at its final name (commit succeeded)."""
        try:
            self._open_temp()
        except OSError as exc:
            directory.close()
            raise os_error(exc, self._label) from None
        except BaseException:
            directory.close()
            raise

    def _open_temp(self) -> None:
        """Make the temporary (``_temp``, ``_fd``); a resumable writer (partial.py)
        opens its partial instead, and resumes the hasher and the count."""
        self._temp = temp_name()
        self._fd = self._dir.open_temp(self._temp)

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()

    @property
    def written(self) -> int:
        return self._written

    @property
    def digest(self) -> bytes:
        """The digest (checksum.py) of the bytes written so far."""
        return self._hasher.digest()

    @property
    def chunks(self) -> list[bytes]:
        """The digests of the whole chunks written so far (a manifest)."""
        return self._hasher.chunks

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes; more than the declared size is an integrity error."""
        label = self._label
        with self._lock:
            if self._ended:
                raise StorageIOError(f"{label}: the upload has already ended")
            if self._bound is not None and self._written + len(data) > self._bound:
                self._end()
                if self._size is None:
                    raise TooLarge(f"{label}: more than the limit of {self._bound} bytes")
                raise IntegrityError(f"{label}: more bytes than the declared {self._size}")
            try:
                write_all(self._fd, data)
                self._hasher.update(data)  # (a journal's callback may do I/O too)
            except OSError as exc:
                self._end()
                raise os_error(exc, label) from None
            self._written += len(data)

    def commit(self, expected_digest: bytes) -> bytes:
        """Verify, make durable and publish; returns the digest of what was written."""
        label = self._label
        with self._lock:
            digest = self._hasher.digest()
            try:
                if self._ended:
                    raise StorageIOError(f"{label}: the upload has already ended")
                if self._size is not None and self._written != self._size:
                    raise IntegrityError(f"{label}: got {self._written} of {self._size} bytes")
                if digest != expected_digest:
                    raise IntegrityError(f"{label}: digest mismatch, not committed")
                self._publish()
            except OSError as exc:
                raise os_error(exc, label) from None
            finally:
                self._end()
        return digest

    def _publish(self) -> None:
        if self._mtime_ns != -1:
            os.utime(self._fd, ns=(self._mtime_ns, self._mtime_ns))
        if self._mode is not None:
            os.fchmod(self._fd, self._mode & 0o777)
        if self._fsync:
            os.fsync(self._fd)
        if self._exclusive:
            self._dir.link(self._temp, self._leaf)
            self._dir.unlink(self._temp)
        else:
            self._dir.replace(self._temp, self._leaf)
        self._temp_gone = True
        # After the last change to the inode (rename and unlink change its ctime),
        # for stores that remember digests by file identity (local.py).
        self.identity = os.fstat(self._fd)
        if self._fsync:
            self._dir.sync()
        self.committed = True

    def abort(self) -> None:
        """Close and remove the temporary file; safe to call more than once, from
        any thread. During a commit it waits for the commit to end; after a
        successful commit it does nothing."""
        with self._lock:
            self._end()

    def _end(self) -> None:
        """(Under the lock.) Close the temporary, remove it unless it was
        published, and close the directory: each at most once, whatever fails."""
        self._ended = True
        fd, self._fd = self._fd, -1
        remove, self._temp_gone = not self._temp_gone, True
        try:
            if fd >= 0:
                os.close(fd)
        finally:
            try:
                if remove:
                    self._remove_temp()
            finally:
                self._dir.close()

    def _remove_temp(self) -> None:
        try:
            self._dir.unlink(self._temp)
        except FileNotFoundError:
            return  # gone already (no contextlib: see sweep)

    identity: os.stat_result | None = None
    """fstat of the committed file, after its rename (None until committed)."""


def current_umask() -> int:
    """The process's umask, read without changing it where /proc allows."""
    for line in _read_text("/proc/self/status").splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
