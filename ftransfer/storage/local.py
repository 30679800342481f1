"""``LocalStore``: a directory on this machine, jailed with openat.

Theory of operation
-------------------
*Containment.* Nothing here joins strings onto the root. Every lookup walks the
components of a checked ``Name`` from a descriptor of the root with
``openat(O_DIRECTORY | O_NOFOLLOW)``, and every syscall (open, stat, rename, link,
unlink, mkdir, rmdir) is relative to the resulting directory descriptor. Symlinks
are therefore never followed, in any position, so no name can reach outside the
root, and a concurrent rename cannot race a check (there is no check-then-use on
a path string). FIFOs, sockets and devices are refused after ``lstat`` and again
after ``fstat``; files are opened ``O_NONBLOCK`` so that even a FIFO swapped in
between the two cannot block the server.

*Writes* go through ``atomic.AtomicWriter`` in the target directory. Replacing a
directory or a symlink is refused, for uploads and moves alike; a no-clobber move
of a file is a hard link and an unlink, which fails atomically if the target
exists.

*Digests.* The store remembers the xxh3-128 of files it committed or that a
reader hashed whole, keyed by the file's identity (device, inode, size, mtime and
ctime, in nanoseconds): any change to the file, a hard link, a rename or an
attribute change moves the ctime, so a remembered digest is never served for
other bytes. Filesystems with whole-second ctimes are not trusted with this (a
change within the second could keep the key). The memory is bounded
(DIGEST_CACHE_ENTRIES) and lost on restart. With it, a download or STAT of a file
the server stored costs no read of the file to hash it.

It also remembers a multi-chunk file's *manifest* (its chunk digests, keyed the
same way), from a commit or a download that read it: a GET_AT resuming a
download compares the client's prefix with it instead of reading the file again.
After a restart, the prefix is read and hashed once (disk speed, no network).

*Temporaries* (atomic.py) are hidden from listings, refused as names and removed by
``sweep_temporaries`` (at start, across the tree) when their writer is gone. A
directory whose only entries are stale temporaries is removable. *Partials* of
resumable uploads (partial.py) sit beside their target, hidden the same way, and
are removed by the same sweep once older than ``partial_ttl_s``.

``os_error`` maps OSError to the ftransfer error tree in one place.
"""

from __future__ import annotations

import _thread
import collections
import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from ..checksum import CHUNK_BYTES, ZERO_DIGEST, TreeHasher, file_digest, hash_range
from ..config import HASH_SCRATCH_BYTES, PARTIAL_PREFIX, PARTIAL_TTL_S, TEMP_PREFIX
from ..errors import (
    DirectoryNotEmpty,
    Exists,
    FtransferError,
    InvalidMove,
    IsADirectory,
    NoSpace,
    NotADirectory,
    NotFound,
    NotRegularFile,
    ResumeRefused,
)
from .atomic import AtomicWriter, FdDirectory, current_umask, is_stale, os_error, sweep
from .base import Probe, Resume, refuse_directory_name
from .entry import Entry, EntryKind
from .names import Name, is_valid_component
from .partial import PartialBusy, PartialWriter, inspect, sweep_partials

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
DIGEST_CACHE_ENTRIES = 16384
"""Digests remembered (about 150 bytes each: ~2.5 MiB at most)."""

MANIFEST_CACHE_ENTRIES = 1024
"""Manifests remembered (16 bytes per 8 MiB chunk: 2 KiB for a 1 GiB file)."""

Identity = tuple[int, int, int, int, int]


def _identity(st: os.stat_result) -> Identity | None:
    if st.st_ctime_ns % 1_000_000_000 == 0:
        return None  # whole-second timestamps: a quick change could keep the key
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class DigestCache:
    """A bounded map from file identity to xxh3-128 (least recently used out).

    Shared by the event loop and the worker threads that hash files (STAT) and
    commit uploads, so every access holds a lock: a lookup's move-to-end must not
    meet another thread's eviction of the same key."""

    def __init__(self, entries: int = DIGEST_CACHE_ENTRIES) -> None:
        self._entries = entries
        self._map: collections.OrderedDict[Identity, bytes] = collections.OrderedDict()
        self._manifests: collections.OrderedDict[Identity, tuple[bytes, ...]] = (
            collections.OrderedDict()
        )
        self._lock = _thread.allocate_lock()

    def manifest(self, st: os.stat_result) -> tuple[bytes, ...]:
        """The whole-chunk digests remembered for this file (maybe only a prefix)."""
        key = _identity(st)
        if key is None:
            return ()
        with self._lock:
            return self._manifests.get(key, ())

    def put_manifest(self, st: os.stat_result, chunks: list[bytes]) -> None:
        key = _identity(st)
        if key is None or len(chunks) < 2 or self._entries <= 0:
            return
        with self._lock:
            if len(self._manifests.get(key, ())) >= len(chunks):
                return
            self._manifests[key] = tuple(chunks)
            self._manifests.move_to_end(key)
            while len(self._manifests) > MANIFEST_CACHE_ENTRIES:
                self._manifests.popitem(last=False)

    def get(self, st: os.stat_result) -> bytes | None:
        key = _identity(st)
        if key is None:
            return None
        with self._lock:
            digest = self._map.get(key)
            if digest is not None:
                self._map.move_to_end(key)
        return digest

    def put(self, st: os.stat_result, digest: bytes) -> None:
        key = _identity(st)
        if key is None or self._entries <= 0:
            return
        with self._lock:
            self._map[key] = digest
            self._map.move_to_end(key)
            while len(self._map) > self._entries:
                self._map.popitem(last=False)


def kind_of(mode: int) -> EntryKind:
    if stat.S_ISREG(mode):
        return EntryKind.FILE
    if stat.S_ISDIR(mode):
        return EntryKind.DIRECTORY
    if stat.S_ISLNK(mode):
        return EntryKind.SYMLINK
    return EntryKind.OTHER


def entry_of(name: str, st: os.stat_result) -> Entry:
    kind = kind_of(st.st_mode)
    size = st.st_size if kind is EntryKind.FILE else 0
    return Entry(name=name, kind=kind, size=size, mtime_ns=st.st_mtime_ns, mode=st.st_mode & 0o777)


def require_regular(st: os.stat_result, name: str) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectory(f"{name}: is a directory")
    if stat.S_ISLNK(st.st_mode):
        raise NotRegularFile(f"{name}: symlinks are not followed")
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(f"{name}: not a regular file")


class LocalReadable:
    """An open regular file under the root."""

    def __init__(self, fd: int, st: os.stat_result, cache: DigestCache) -> None:
        self._fd, self._st, self._cache = fd, st, cache
        self.size, self.mtime_ns, self.mode = st.st_size, st.st_mtime_ns, st.st_mode & 0o777
        self.digest = cache.get(st)

    def fileno(self) -> int:
        """The descriptor, for sendfile (the zero-copy fast path)."""
        return self._fd

    def read(self, offset: int, n: int) -> bytes:
        try:
            return os.pread(self._fd, n, offset)
        except OSError as exc:
            raise os_error(exc, "file") from None

    def remember_digest(self, digest: bytes) -> None:
        with contextlib.suppress(OSError):
            if os.fstat(self._fd).st_ctime_ns == self._st.st_ctime_ns:  # unchanged since open
                self._cache.put(self._st, digest)

    def remember_chunks(self, chunks: list[bytes]) -> None:
        with contextlib.suppress(OSError):
            if os.fstat(self._fd).st_ctime_ns == self._st.st_ctime_ns:
                self._cache.put_manifest(self._st, chunks)

    def chunk_digests(self, count: int) -> list[bytes]:
        """The digests of the first ``count`` chunks: remembered, or read and hashed
        (and then remembered)."""
        known = list(self._cache.manifest(self._st)[:count])
        if len(known) >= count:
            return known
        hasher = TreeHasher()
        try:
            hash_range(hasher, self._fd, 0, count * CHUNK_BYTES, bytearray(HASH_SCRATCH_BYTES))
        except OSError as exc:
            raise os_error(exc, "file") from None
        self.remember_chunks(hasher.chunks)
        return hasher.chunks[:count]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class LocalWriter(AtomicWriter):
    """An AtomicWriter that tells the store's digest memory what it committed."""

    cache: DigestCache | None = None

    def commit(self, expected_digest: bytes) -> bytes:
        digest = super().commit(expected_digest)
        if self.cache is not None and self.identity is not None:
            self.cache.put(self.identity, digest)
            self.cache.put_manifest(self.identity, self.chunks)
        return digest


class LocalPartialWriter(PartialWriter, LocalWriter):
    """A resumable upload (partial.py) that remembers what it committed."""


class LocalStore:
    """A served root directory: every name resolves below it, never through a link."""

    def __init__(
        self, root: str | Path, *, fsync: bool = True, partial_ttl_s: float = PARTIAL_TTL_S
    ) -> None:
        self.root = Path(root).resolve()
        self.fsync = fsync
        self.partial_ttl_s = partial_ttl_s
        self.umask = current_umask()
        self.digests = DigestCache()
        try:
            self._root_fd = os.open(self.root, _DIR_FLAGS & ~os.O_NOFOLLOW)
        except OSError as exc:
            raise os_error(exc, str(root)) from None

    def scoped(self, name: Name) -> LocalStore:
        """See ``Store.scoped``: the new store holds its own descriptor of the
        directory, opened through the jail (no symlink on the way)."""
        self.mkdir(name, parents=True)
        fd = self._open_dir(name.parts, name)
        store = object.__new__(LocalStore)
        store.root, store.fsync, store.umask = (
            self.root.joinpath(*name.parts),
            self.fsync,
            self.umask,
        )
        store.digests, store._root_fd = self.digests, fd
        store.partial_ttl_s = self.partial_ttl_s
        return store

    def close(self) -> None:
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    # ---- resolution -----------------------------------------------------------------

    def _open_dir(self, parts: tuple[str, ...], name: Name) -> int:
        """A new descriptor for the directory ``parts`` under the root."""
        fd = os.dup(self._root_fd)
        try:
            for part in parts:
                child = self._open_subdir(fd, part, name)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _open_subdir(dir_fd: int, part: str, name: Name) -> int:
        """openat(O_DIRECTORY | O_NOFOLLOW), saying "symlink" when that is why it failed."""
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:
                with contextlib.suppress(OSError):
                    if stat.S_ISLNK(os.stat(part, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                        exc = OSError(errno.ELOOP, "symlink")
            raise os_error(exc, str(name)) from None

    @staticmethod
    def _lstat(dir_fd: int, leaf: str, name: Name) -> os.stat_result:
        try:
            return os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            raise os_error(exc, str(name)) from None

    def _lstat_name(self, name: Name) -> os.stat_result:
        if not name.parts:
            return os.fstat(self._root_fd)
        dfd = self._open_dir(name.parts[:-1], name)
        try:
            return self._lstat(dfd, name.leaf, name)
        finally:
            os.close(dfd)

    def _sync_dir(self, dfd: int) -> None:
        if self.fsync:
            os.fsync(dfd)

    # ---- reading --------------------------------------------------------------------

    def open_read(self, name: Name) -> LocalReadable:
        if not name.parts:
            raise IsADirectory("/: is a directory")
        if name.directory:
            refuse_directory_name(self, name)
        dfd = self._open_dir(name.parts[:-1], name)
        try:
            require_regular(self._lstat(dfd, name.leaf, name), str(name))
            fd = os.open(name.leaf, _READ_FLAGS, dir_fd=dfd)
        except OSError as exc:
            raise os_error(exc, str(name)) from None
        finally:
            os.close(dfd)
        st = os.fstat(fd)
        try:
            require_regular(st, str(name))
        except FtransferError:
            os.close(fd)
            raise
        return LocalReadable(fd, st, self.digests)

    def stat(self, name: Name) -> Entry:
        st = self._lstat_name(name)
        if name.directory and not stat.S_ISDIR(st.st_mode):
            raise NotADirectory(f"{name}: not a directory")
        return entry_of(name.text, st)

    def digest(self, name: Name) -> bytes:
        readable = self.open_read(name)
        try:
            if readable.digest is not None:
                return readable.digest
            try:
                digest = file_digest(readable.fileno())
            except OSError as exc:
                raise os_error(exc, str(name)) from None
            readable.remember_digest(digest)
            return digest
        finally:
            readable.close()

    def list(self, name: Name) -> Iterator[Entry]:
        dfd = self._open_dir(name.parts, name)
        try:
            with os.scandir(dfd) as scanner:  # DirEntry.stat uses dfd: keep it open
                for item in scanner:
                    if not is_valid_component(item.name):
                        continue  # temporaries, and names no request could use
                    try:
                        yield entry_of(item.name, item.stat(follow_symlinks=False))
                    except FileNotFoundError:
                        continue
        except OSError as exc:
            raise os_error(exc, str(name)) from None
        finally:
            os.close(dfd)

    # ---- writing --------------------------------------------------------------------

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
    ) -> LocalWriter:
        if not name.parts:
            raise IsADirectory(f"{name}: is a directory")
        if name.directory:
            refuse_directory_name(self, name)
        resumable = resume is not None and size is not None and size > CHUNK_BYTES
        if resume is not None and resume.offset and not resumable:
            raise ResumeRefused(f"{name}: a file of one chunk is not resumed")
        final_mode = None if mode is None else mode & 0o777 & ~self.umask

        def made(dfd: int, partial: Resume | None) -> LocalWriter:
            if partial is None:
                return LocalWriter(
                    FdDirectory(dfd), name.leaf, size=size, mtime_ns=mtime_ns, mode=final_mode,
                    exclusive=exclusive, fsync=self.fsync, limit=limit, label=str(name),
                )  # fmt: skip
            assert size is not None
            return LocalPartialWriter(
                FdDirectory(dfd), name.leaf, resume=partial, ttl_s=self.partial_ttl_s,
                size=size, mtime_ns=mtime_ns, mode=final_mode,
                exclusive=exclusive, fsync=self.fsync, limit=limit, label=str(name),
            )  # fmt: skip

        writer: LocalWriter | None = None
        if resumable:
            assert resume is not None and size is not None
            try:
                writer = made(self._directory_for(name, exclusive, size - resume.offset), resume)
            except PartialBusy:
                if resume.offset:
                    raise ResumeRefused(f"{name}: another transfer is writing it") from None
                # (a second writer of the same name now: an ordinary upload)
        if writer is None:
            writer = made(self._directory_for(name, exclusive, size), None)
        writer.cache = self.digests
        return writer

    def _directory_for(self, name: Name, exclusive: bool, need: int | None) -> int:
        """The target's directory, once the target may be written with ``need``
        more bytes."""
        dfd = self._open_dir(name.parts[:-1], name)
        try:
            self._check_target(dfd, name, exclusive)
            vfs = os.fstatvfs(dfd)
            if need is not None and need > vfs.f_bavail * vfs.f_frsize:
                raise NoSpace(f"{name}: {need} bytes do not fit in the free space")
        except BaseException:
            os.close(dfd)
            raise
        return dfd

    def partial(self, name: Name, *, size: int, mtime_ns: int, resume: Resume) -> Probe:
        if not name.parts or size <= CHUNK_BYTES:
            return Probe(offset=0, prefix=ZERO_DIGEST)
        try:
            dfd = self._open_dir(name.parts[:-1], name)
        except FtransferError:
            return Probe(offset=0, prefix=ZERO_DIGEST)
        directory = FdDirectory(dfd)
        try:
            return inspect(
                directory, resume, size=size, mtime_ns=mtime_ns, ttl_s=self.partial_ttl_s
            )
        finally:
            directory.close()

    def _check_target(self, dfd: int, name: Name, exclusive: bool) -> None:
        try:
            st = os.stat(name.leaf, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise os_error(exc, str(name)) from None
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectory(f"{name}: is a directory")
        if stat.S_ISLNK(st.st_mode):
            raise NotRegularFile(f"{name}: symlinks are not followed or replaced")
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"{name}: not a regular file, not replaced")
        if exclusive:
            raise Exists(f"{name}: exists")

    def remove(self, name: Name) -> None:
        if not name.parts:
            raise DirectoryNotEmpty("/: the root is not removed")
        dfd = self._open_dir(name.parts[:-1], name)
        try:
            st = self._lstat(dfd, name.leaf, name)
            if stat.S_ISDIR(st.st_mode):
                self._rmdir(dfd, name)
            elif name.directory:
                raise NotADirectory(f"{name}: not a directory")
            else:
                os.unlink(name.leaf, dir_fd=dfd)
            self._sync_dir(dfd)
        except OSError as exc:
            raise os_error(exc, str(name)) from None
        finally:
            os.close(dfd)

    def _rmdir(self, dfd: int, name: Name) -> None:
        try:
            os.rmdir(name.leaf, dir_fd=dfd)
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        # Not empty: perhaps only temporaries nobody writes any more, or partials
        # nobody is writing (an interrupted upload's: removing the directory is
        # saying it will not be resumed there).
        inner = FdDirectory(self._open_subdir(dfd, name.leaf, name))
        try:
            sweep(inner)
            sweep_partials(inner, -1.0)
            left = inner.names()
        finally:
            inner.close()
        if left and all(n.startswith((TEMP_PREFIX, PARTIAL_PREFIX)) for n in left):
            raise DirectoryNotEmpty(f"{name}: directory not empty (an upload into it is running)")
        if left:
            raise DirectoryNotEmpty(f"{name}: directory not empty")
        os.rmdir(name.leaf, dir_fd=dfd)

    def mkdir(self, name: Name, *, parents: bool) -> None:
        if not name.parts:
            if parents:
                return
            raise Exists("/: exists")
        fd = os.dup(self._root_fd)
        try:
            for index, part in enumerate(name.parts):
                last = index == len(name.parts) - 1
                if parents or last:
                    self._mkdir_one(fd, part, name, exist_ok=parents)
                child = self._open_subdir(fd, part, name)
                os.close(fd)
                fd = child
        finally:
            os.close(fd)

    def _mkdir_one(self, dfd: int, part: str, name: Name, *, exist_ok: bool) -> None:
        try:
            os.mkdir(part, 0o777, dir_fd=dfd)
            self._sync_dir(dfd)
        except FileExistsError:
            if not exist_ok:
                raise Exists(f"{name}: exists") from None
        except OSError as exc:
            raise os_error(exc, str(name)) from None

    def move(self, source: Name, target: Name, *, exclusive: bool) -> Name:
        if not source.parts:
            raise InvalidMove("/: the root cannot be moved")
        sfd = self._open_dir(source.parts[:-1], source)
        try:
            src_st = self._lstat(sfd, source.leaf, source)
            if source.directory and not stat.S_ISDIR(src_st.st_mode):
                raise NotADirectory(f"{source}: not a directory")
            final = self._move_target(source, target)
            if stat.S_ISDIR(src_st.st_mode) and final.is_within(source):
                raise InvalidMove(f"{source}: cannot move a directory into itself")
            dfd = self._open_dir(final.parts[:-1], final)
            try:
                self._rename(sfd, source, dfd, final, src_st, exclusive)
                self._sync_dir(dfd)
                self._sync_dir(sfd)
            except OSError as exc:
                raise os_error(exc, str(final)) from None
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)
        return final

    def _move_target(self, source: Name, target: Name) -> Name:
        """``target`` itself, or ``target/leaf`` when it is an existing directory."""
        try:
            st = self._lstat_name(target)
        except NotFound:
            if target.directory:
                raise NotADirectory(f"{target}: no such directory") from None
            return target
        if stat.S_ISDIR(st.st_mode):
            return Name(parts=(*target.parts, source.leaf))
        if target.directory:
            raise NotADirectory(f"{target}: not a directory")
        return target

    def _rename(
        self,
        sfd: int,
        source: Name,
        dfd: int,
        final: Name,
        src_st: os.stat_result,
        exclusive: bool,
    ) -> None:
        try:
            st = os.stat(final.leaf, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None:
            if (st.st_dev, st.st_ino) == (src_st.st_dev, src_st.st_ino):
                return  # moving onto itself (a hard link, or the same name): nothing to do
            if exclusive:
                raise Exists(f"{final}: exists")
            if stat.S_ISLNK(st.st_mode):
                raise NotRegularFile(f"{final}: symlinks are not replaced")
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectory(f"{final}: is a directory, not replaced")
            if not stat.S_ISREG(st.st_mode):
                raise NotRegularFile(f"{final}: not a regular file, not replaced")
            if stat.S_ISDIR(src_st.st_mode):
                raise NotADirectory(f"{final}: a directory cannot replace a file")
        if exclusive and stat.S_ISREG(src_st.st_mode):
            # link fails atomically if the name appeared meanwhile; then drop the old name
            os.link(source.leaf, final.leaf, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
            os.unlink(source.leaf, dir_fd=sfd)
            return
        os.rename(source.leaf, final.leaf, src_dir_fd=sfd, dst_dir_fd=dfd)

    def sweep_temporaries(self) -> int:
        removed = 0
        for _path, _dirs, files, dfd in os.fwalk(".", dir_fd=self._root_fd):
            if any(f.startswith((TEMP_PREFIX, PARTIAL_PREFIX)) for f in files):
                directory = FdDirectory(os.dup(dfd))
                try:
                    removed += sweep(directory) + sweep_partials(directory, self.partial_ttl_s)
                finally:
                    directory.close()
        return removed


__all__ = ["DigestCache", "LocalReadable", "LocalStore", "is_stale"]
